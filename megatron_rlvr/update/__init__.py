"""Update stage: what changes the models' weights from a step's rollouts, under Megatron-Core.

- `policy`: the log-prob recompute and the PPO update of the policy (`update_policy`);
- `memory`: the memory model's cross-entropy update (`update_memory`), also the warm start's step;
- `losses`, `offpolicy`: the loss as pure tensor functions (PPO surrogate, aggregation, KL, entropy, TIS) and the
  DLC off-policy corrections (docs/ALGORITHMS.md);
- `micro_batching`, `packing`, `logprobs`: micro-batch plans (token budget), THD packing, chunked log-probs;
- `trainable`: `TrainableModel`, one Megatron model with its optimizer, schedule and dist-checkpointing.

`trainable` imports Megatron-Core; it is not imported here, so the pure parts stay importable without it.
"""

from megatron_rlvr.update.memory import cross_entropy_step, update_memory
from megatron_rlvr.update.policy import recompute_logprobs, sequence_lengths, update_policy

__all__ = ["cross_entropy_step", "recompute_logprobs", "sequence_lengths", "update_memory", "update_policy"]
