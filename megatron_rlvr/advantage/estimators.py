"""Advantage stage: per-response advantages from verifier rewards, then IAC (docs/ALGORITHMS.md:
"Advantage estimators", "IAC").

Every estimator maps rewards (N,) of a flat batch plus the query id of each response to one scalar advantage
per response; the trainer broadcasts it to that response's tokens. Conventions (docs/ALGORITHMS.md, "Where this
project deliberately differs from verl", lists the departures from verl's reference implementation):

- `grpo` divides by the *unbiased* (Bessel-corrected, G - 1) standard deviation of the group plus `eps`;
  an all-equal group therefore gets advantage exactly 0.
- `reinforce_pp_baseline` subtracts the group mean, then whitens with the mean and *population* standard
  deviation of the whole batch (one value per response, not per token as verl's `masked_whiten` does). `batch_ids` may split the input into
  several independently whitened batches (e.g. independent runs vectorised into one call by the toy study).
- `rloo` uses the mean of the other G - 1 rewards of the group as baseline, which equals
  G / (G - 1) * (r_i - mean(r)).
- `raw` (A = r) is the only estimator that allows groups of size 1; the others raise (verl instead uses mean 0 and
  std 1 for a singleton, i.e. A = r), because a group
  baseline of a single sample is undefined (or zero by construction) and that is almost always a bug in
  how the batch was assembled.

All arithmetic runs in float64 and the result is cast back to the rewards' dtype, so the tests can assert
hand-computed values exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_rlvr.advantage.iac import iac_weights
from megatron_rlvr.rollout.groups import GroupIndex, group_index

from megatron_rlvr.registry import ESTIMATORS as _REGISTRY

ESTIMATORS = _REGISTRY.names()  # the names, in the registry's order (megatron_rlvr.registry)
# estimators whose baseline needs >= 2 samples per group
GROUP_ESTIMATORS = _REGISTRY.with_trait("group")

# Registered estimators (megatron_rlvr.registry.ESTIMATORS): fn(r, g, eps, batch_ids) on float64 rewards.


def grpo(r: Tensor, g: GroupIndex, eps: float, batch_ids: Tensor | None = None) -> Tensor:
    mean = g.mean(r)
    centred = r - mean[g.inverse]
    var = g.sum(centred * centred) / (g.counts.to(r.dtype) - 1.0)
    return centred / (var.sqrt()[g.inverse] + eps)


def centred(r: Tensor, g: GroupIndex, eps: float = 0.0, batch_ids: Tensor | None = None) -> Tensor:
    """drgrpo and mean: identical advantages; Dr.GRPO additionally aggregates the loss by a constant (loss_agg
    'seq-mean-token-sum-norm'), which is the trainer's choice, not the estimator's."""
    return r - g.mean(r)[g.inverse]


def rloo(r: Tensor, g: GroupIndex, eps: float = 0.0, batch_ids: Tensor | None = None) -> Tensor:
    size = g.counts.to(r.dtype)[g.inverse]
    leave_one_out_mean = (g.sum(r)[g.inverse] - r) / (size - 1.0)
    return r - leave_one_out_mean


def reinforce_pp_baseline(r: Tensor, g: GroupIndex, eps: float, batch_ids: Tensor | None = None) -> Tensor:
    dev = centred(r, g)
    # population std over the batch, as REINFORCE++'s global normalisation (Hu et al.) does
    if batch_ids is None:
        return (dev - dev.mean()) / (dev.std(correction=0) + eps)
    batches = group_index(batch_ids, r.shape[0])
    dev = dev - batches.mean(dev)[batches.inverse]
    std = batches.mean(dev * dev).sqrt()
    return dev / (std[batches.inverse] + eps)


def raw(r: Tensor, g: GroupIndex, eps: float = 0.0, batch_ids: Tensor | None = None) -> Tensor:
    return r


def base_advantages(
    rewards: Tensor, group_ids: Tensor, estimator: str, eps: float = 1e-6, batch_ids: Tensor | None = None
) -> Tensor:
    """Advantages of one estimator (docs/ALGORITHMS.md, "Advantage estimators"), without IAC.
    Shapes: rewards (N,), group_ids (N,) -> (N,)."""
    adv, _ = _base_advantages64(rewards, group_ids, estimator, eps, batch_ids)
    return adv.to(rewards.dtype)


def _base_advantages64(
    rewards: Tensor, group_ids: Tensor, estimator: str, eps: float, batch_ids: Tensor | None
) -> tuple[Tensor, GroupIndex]:
    _check_rewards(rewards)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0 (it only guards division by a zero std), got {eps!r}")
    g = group_index(group_ids, rewards.shape[0])
    if estimator in GROUP_ESTIMATORS and int(g.counts.min()) < 2:
        raise ValueError(
            f"estimator {estimator!r} needs >= 2 responses per query (group), but a group of size "
            f"{int(g.counts.min())} was found; sample G >= 2 responses per prompt or use estimator 'raw'"
        )
    r = rewards.to(torch.float64)
    adv = _REGISTRY.load(estimator)(r, g, eps, batch_ids)
    return adv, g


def compute_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    estimator: str,
    iac_alpha: float = 0.0,
    eps: float = 1e-6,
    batch_ids: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Advantages of the given estimator followed by IAC with strength `iac_alpha` (docs/ALGORITHMS.md:
    "Advantage estimators", then "IAC").

    Args:
        rewards: (N,) float rewards, one per response (binary for verifiable rewards, real values allowed).
        group_ids: (N,) int64 query id of each response (any order, any ids, groups may differ in size).
        estimator: one of ESTIMATORS.
        iac_alpha: IAC strength >= 0; 0 returns the base estimator unchanged.
        eps: added to standard deviations before dividing (grpo, reinforce_pp_baseline).
        batch_ids: optional (N,) ids of independently whitened batches for reinforce_pp_baseline (each group
            must lie in one batch); None whitens the whole input together. Ignored by the other estimators.

    Returns:
        (advantages (N,) in the rewards' dtype, stats) where stats holds python floats:
        `adv_mean`, `adv_std` (population), `adv_pos_frac` (share of A > 0), `reward_mean`,
        `degenerate_group_frac` (share of groups whose rewards are all equal; they carry no GRPO signal),
        `iac_weight_mean` / `iac_weight_max` (over positive samples; 1.0 when there are none).
    """
    adv64, g = _base_advantages64(rewards, group_ids, estimator, eps, batch_ids)
    weights = iac_weights(adv64, g, iac_alpha)
    adv = (adv64 * weights).to(rewards.dtype)

    r64 = rewards.to(torch.float64)
    positive = adv > 0
    pos_weights = weights[positive]
    stats = {
        "adv_mean": float(adv.double().mean()),
        "adv_std": float(adv.double().std(correction=0)),
        "adv_pos_frac": float(positive.double().mean()),
        "reward_mean": float(r64.mean()),
        "degenerate_group_frac": float((g.max(r64) == g.min(r64)).double().mean()),
        "iac_weight_mean": float(pos_weights.mean()) if pos_weights.numel() else 1.0,
        "iac_weight_max": float(pos_weights.max()) if pos_weights.numel() else 1.0,
    }
    return adv, stats


def _check_rewards(rewards: Tensor) -> None:
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards must be a torch.Tensor of shape (N,), got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), one per response; got shape {tuple(rewards.shape)}")
    if not rewards.dtype.is_floating_point:
        raise TypeError(f"rewards must be a floating tensor, got {rewards.dtype}; call .float() on them")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf; check the verifier / reward shaping output")
