"""Reward and batch-assembly stage: the DAPO features that are not part of the loss (docs/ALGORITHMS.md, "DAPO").

- Dynamic sampling (Yu et al. 2025, DAPO section 3.2): groups whose rewards are all equal (all correct or
  all wrong) have zero group-relative advantage and only dilute the batch, so they are dropped and the
  trainer oversamples prompts to refill it. `dynamic_sampling_keep` gives the per-response mask.
- Overlong reward shaping (DAPO section 3.4): a linear length penalty in the last `cache_len` tokens before
  the maximum length, so truncated answers are discouraged smoothly rather than only through a 0 reward.

Clip-higher (eps_low != eps_high) and token-level aggregation live in `losses.policy_loss`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_rlvr.rollout.groups import group_index


def dynamic_sampling_keep(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Boolean (N,) mask that is False for every response of a group whose rewards are all equal.

    Equality is exact: verifier rewards are binary (or drawn from a small set of shaped values), so any
    difference, however small, means the group carries a learning signal.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    g = group_index(group_ids, rewards.shape[0])
    r = rewards.to(torch.float64)
    informative = g.max(r) > g.min(r)  # (num_groups,)
    return informative[g.inverse]


def overlong_penalty(
    response_lengths: Tensor, max_len: int, cache_len: int, penalty: float = 1.0
) -> Tensor:
    """DAPO's soft overlong punishment, a reward term <= 0 added to the verifier reward.

        0                                      if L <= max_len - cache_len
        penalty * ((max_len - cache_len) - L) / cache_len   if max_len - cache_len < L <= max_len
        -penalty                               if L > max_len

    Args:
        response_lengths: (N,) number of generated tokens of each response.
        max_len: the maximum response length L_max.
        cache_len: the length L_cache of the penalty interval, 0 < cache_len <= max_len.
        penalty: magnitude of the full penalty (DAPO uses 1.0).

    Returns:
        (N,) float32 penalties in [-penalty, 0].
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(
            f"overlong_penalty needs 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}; "
            "DAPO uses e.g. max_len=20480 with cache_len=4096"
        )
    if penalty < 0:
        raise ValueError(f"overlong penalty magnitude must be >= 0, got {penalty}")
    if response_lengths.dim() != 1:
        raise ValueError(f"response_lengths must be 1-D (N,), got shape {tuple(response_lengths.shape)}")
    lengths = response_lengths.to(torch.float64)
    soft_start = float(max_len - cache_len)
    ramp = (soft_start - lengths) / float(cache_len)  # in [-1, 0) inside the interval
    out = torch.where(lengths <= soft_start, torch.zeros_like(lengths), ramp.clamp_min(-1.0))
    return (out * penalty).to(torch.float32)
