"""megatron-rlvr: RL with verifiable rewards for Qwen3 on Megatron-Core, with IAC and DLC.

Data flow of one step (see `megatron_rlvr.train`): rollout -> reward -> advantage -> update -> weight sync.
"""

__version__ = "0.1.0"
