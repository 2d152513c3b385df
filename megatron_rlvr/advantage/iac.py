"""Advantage stage: inverse-success advantage calibration (IAC; docs/ALGORITHMS.md, "IAC"; paper section 4.1).

For each group (the G responses to one query) let P_q = {i : A_i > 0} be its positive trajectories and
N = G its size. IAC rescales only the positive advantages:

    A'_i = A_i * (N / |P_q|) ** alpha   if A_i > 0
    A'_i = A_i                           otherwise

so that queries the policy already solves often (|P_q| close to N) contribute a smaller positive push than
hard queries with a single success, which keeps the batch partition function Z from growing (paper
Theorem 3.3). Negative advantages are never rescaled: the paper argues negatives are often partially correct
or merely truncated, and amplifying them destabilises training. alpha = 0 returns the input unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_rlvr.rollout.groups import GroupIndex, group_index


def iac_weights(advantages: Tensor, groups: GroupIndex, alpha: float) -> Tensor:
    """Per-sample IAC multipliers: (N / |P_q|) ** alpha for positive advantages and 1 elsewhere.

    Groups without any positive advantage (e.g. all-wrong groups under GRPO) get weight 1 everywhere.
    """
    _check_alpha(alpha)
    positive = advantages > 0
    num_pos = groups.sum(positive.to(torch.float64))  # (num_groups,)
    size = groups.counts.to(torch.float64)
    # clamp only guards the 0/0 of groups with no positives; those groups have no positive sample to scale
    per_group = (size / num_pos.clamp_min(1.0)) ** float(alpha)
    weights = torch.where(positive, per_group[groups.inverse], torch.ones_like(per_group[groups.inverse]))
    return weights.to(advantages.dtype)


def iac_calibrate(advantages: Tensor, group_ids: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Apply IAC to per-sample advantages (docs/ALGORITHMS.md, "IAC").

    Args:
        advantages: (N,) advantages from any base estimator (GRPO, RLOO, ...), one per response.
        group_ids: (N,) int64 query id of each response; ids need not be contiguous or sorted. The group size
            N in the formula is the number of responses sharing an id in this batch.
        alpha: calibration strength >= 0 (paper default 1.0, sweep {0, 0.5, 1, 1.5, 2}).

    Returns:
        (calibrated advantages (N,), weights (N,)) with calibrated = advantages * weights.
    """
    if advantages.dim() != 1:
        raise ValueError(f"iac_calibrate: advantages must be 1-D (N,), got shape {tuple(advantages.shape)}")
    groups = group_index(group_ids, advantages.shape[0])
    weights = iac_weights(advantages, groups, alpha)
    return advantages * weights, weights


def _check_alpha(alpha: float) -> None:
    if not (alpha >= 0.0) or alpha != alpha or alpha == float("inf"):
        raise ValueError(f"IAC alpha must be a finite number >= 0 (0 disables IAC), got {alpha!r}")
