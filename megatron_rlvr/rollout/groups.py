"""Rollout groups: vectorised per-group reductions over a flat batch of responses (the reward stage's dynamic
sampling and the advantage estimators both reduce per group).

Responses arrive flat, (N,), with an int64 `group_ids` tensor naming the query of each one. Ids need not be
sorted or contiguous (dynamic sampling drops whole groups), and groups may differ in size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GroupIndex:
    """Dense group numbering of a batch: `inverse[i]` is the group of sample i, `counts[g]` its size."""

    inverse: Tensor  # (N,) int64 in [0, num_groups)
    counts: Tensor  # (num_groups,) int64

    @property
    def num_groups(self) -> int:
        return int(self.counts.numel())

    def sum(self, values: Tensor) -> Tensor:
        """Per-group sums of a (N,) tensor, shape (num_groups,)."""
        out = torch.zeros(self.num_groups, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.inverse, values)

    def mean(self, values: Tensor) -> Tensor:
        return self.sum(values) / self.counts.to(values.dtype)

    def max(self, values: Tensor) -> Tensor:
        out = torch.full((self.num_groups,), -torch.inf, dtype=values.dtype, device=values.device)
        return out.scatter_reduce_(0, self.inverse, values, reduce="amax", include_self=True)

    def min(self, values: Tensor) -> Tensor:
        out = torch.full((self.num_groups,), torch.inf, dtype=values.dtype, device=values.device)
        return out.scatter_reduce_(0, self.inverse, values, reduce="amin", include_self=True)


def group_index(group_ids: Tensor, n: int) -> GroupIndex:
    """Validate `group_ids` against a batch of `n` samples and number its groups densely."""
    if not isinstance(group_ids, Tensor):
        raise TypeError(f"group_ids must be a torch.Tensor of int64 query ids, got {type(group_ids).__name__}")
    if group_ids.dim() != 1 or group_ids.shape[0] != n:
        raise ValueError(
            f"group_ids must have shape ({n},) to match the rewards/advantages, got {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor (int64 query ids), got dtype {group_ids.dtype}")
    if n == 0:
        raise ValueError("empty batch: at least one response is needed to compute advantages")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return GroupIndex(inverse=inverse, counts=counts)
