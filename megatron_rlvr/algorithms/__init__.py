"""Advantage and policy-update stages as pure tensor functions (SPEC 2.1-2.5), independent of Megatron.

The trainer calls, per step: `dynamic_sampling_keep` / `overlong_penalty` on the rollouts (DAPO),
`compute_advantages` (estimator, then IAC), `offpolicy_weights` (DLC-aware importance weights), and per micro-batch `policy_loss` with global denominators from
`count_loss_units`. The toy study in `examples/toy_softmax` uses the same functions.
"""
from megatron_rlvr.algorithms.advantages import ESTIMATORS, GROUP_ESTIMATORS, base_advantages, compute_advantages
from megatron_rlvr.algorithms.dapo import dynamic_sampling_keep, overlong_penalty
from megatron_rlvr.algorithms.iac import iac_calibrate
from megatron_rlvr.algorithms.offpolicy import CORRECTIONS, correction_weights, offpolicy_weights, split_log_ratios
from megatron_rlvr.algorithms.losses import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    aggregate,
    count_loss_units,
    kl_estimate,
    policy_loss,
    tis_weights,
)

__all__ = [
    "CORRECTIONS",
    "correction_weights",
    "offpolicy_weights",
    "split_log_ratios",
    "ESTIMATORS",
    "GROUP_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "aggregate",
    "base_advantages",
    "compute_advantages",
    "count_loss_units",
    "dynamic_sampling_keep",
    "iac_calibrate",
    "kl_estimate",
    "overlong_penalty",
    "policy_loss",
    "tis_weights",
]
