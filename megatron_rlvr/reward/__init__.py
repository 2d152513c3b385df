"""Reward stage: verifier rewards of the rollouts, DAPO overlong shaping and dynamic sampling.

- `collect`: `collect_rollouts`, the step's scored batch (rounds of rollouts until it is full);
- `dapo`: the DAPO reward-side features as pure tensor functions (`overlong_penalty`, `dynamic_sampling_keep`).

The verifiers themselves belong to the tasks (`megatron_rlvr.tasks`: `Task.score_many`, math-verify,
`task.math.reward_fn`).
"""

from megatron_rlvr.reward.collect import collect_rollouts
from megatron_rlvr.reward.dapo import dynamic_sampling_keep, overlong_penalty

__all__ = ["collect_rollouts", "dynamic_sampling_keep", "overlong_penalty"]
