"""Advantage stage: the configured estimator, then IAC (docs/ALGORITHMS.md), over a step's rollouts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from megatron_rlvr.advantage.estimators import compute_advantages
from megatron_rlvr.rollout.types import RolloutBatch

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import AlgorithmConfig


def assign_advantages(batch: RolloutBatch, cfg: AlgorithmConfig) -> dict[str, float]:
    """Fill `batch.advantages` (one per response) and return IAC/advantage statistics for the metrics."""
    adv, stats = compute_advantages(batch.rewards, batch.group_ids, cfg.estimator, iac_alpha=cfg.iac_alpha,
                                    eps=cfg.std_eps)
    batch.advantages = adv
    rename = {"iac_weight_mean": "iac/weight_mean", "iac_weight_max": "iac/weight_max"}
    out = {rename.get(k, f"advantage/{k}"): float(v) for k, v in stats.items()}
    out["advantage/abs_mean"] = float(adv.abs().mean())
    return out
