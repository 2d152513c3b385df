"""Policy-update stage: off-policy correction built for DLC, as pure tensor functions.

A DLC rollout token y_t is drawn from pi_cal = softmax((z_theta - lambda z_phi) / T) by the engine, which also
returns log pi_policy(engine) = log softmax(z_theta / T)[y_t] from the same forward pass; the trainer recomputes
log pi_old with its own (Megatron) forward. The gap between sampler and trainer is the product of two ratios of
different nature, kept apart here:

    mismatch r^mis_t = pi_old(y_t) / pi_policy_engine(y_t)   numerical: kernels, dtypes, parallel layouts (~1)
    shift    r^sft_t = pi_policy_engine(y_t) / pi_cal(y_t)    intended: the DLC calibration (exactly 1 at lambda=0)

    r^mis_t * r^sft_t = pi_old / pi_cal    (what `algorithm.tis` truncates as one product)

Each ratio gets its own correction (`CORRECTIONS`), with log-ratios summed over a response's tokens for the
sequence-level forms (r_i = prod_t r_t):

    none       w = 1
    token-tis  w_t = min(r_t, C)                       truncated importance sampling, per token
    seq-tis    w_i = min(r_i, C)                       ... per sequence, broadcast to its tokens
    token-mis  w_t = r_t * 1[low <= r_t <= C]          masked importance sampling: out-of-range tokens dropped
    seq-mis    w_i = r_i * 1[low <= r_i <= C]          ... whole sequences dropped

The policy gradient term of every token is multiplied by w^mis * w^sft (no gradient through either). A
truncated token/sequence, or a masked one, counts as "clipped" in the metrics. Log-ratios are clamped to
[-20, 20] before exp, so a runaway sequence ratio saturates instead of overflowing.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

CORRECTIONS = ("none", "token-tis", "seq-tis", "token-mis", "seq-mis")
RATIO_KINDS = ("mismatch", "shift")
QUANTILES = (0.05, 0.5, 0.95)
_LOG_CLAMP = 20.0


def split_log_ratios(
    old_logprobs: Tensor, engine_policy_logprobs: Tensor, cal_logprobs: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """(log r^mis, log r^sft), both (N, T) float32, 0 outside `mask`.

    log r^mis = log pi_old - log pi_policy(engine); log r^sft = log pi_policy(engine) - log pi_cal.
    """
    for name, t in (("engine_policy_logprobs", engine_policy_logprobs), ("cal_logprobs", cal_logprobs),
                    ("mask", mask)):
        if t.shape != old_logprobs.shape:
            raise ValueError(f"{name} must have the shape of old_logprobs {tuple(old_logprobs.shape)}, "
                             f"got {tuple(t.shape)}")
    m = _bool(mask)
    zero = torch.zeros_like(old_logprobs, dtype=torch.float32)
    old = torch.where(m, old_logprobs.detach().float(), zero)
    pol = torch.where(m, engine_policy_logprobs.detach().float(), zero)
    cal = torch.where(m, cal_logprobs.detach().float(), zero)
    return old - pol, pol - cal


def correction_weights(
    log_ratio: Tensor, mask: Tensor, correction: str, cap: float, low: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(weights (N, T), clipped) of one correction (module docstring). `clipped` is a bool tensor over the units the
    correction acts on: (N, T) tokens for token-level forms, (N,) responses for sequence-level ones (all False for
    `none`). Weights are 0 outside `mask`."""
    _check_correction(correction, cap, low)
    m = _bool(mask)
    lr = torch.where(m, log_ratio.detach().float(), torch.zeros_like(log_ratio, dtype=torch.float32))
    ones = m.float()
    if correction == "none":
        return ones, torch.zeros_like(m)
    if correction.startswith("token"):
        r = torch.exp(lr.clamp(-_LOG_CLAMP, _LOG_CLAMP))
        if correction == "token-tis":
            clipped = m & (r > cap)
            w = r.clamp(max=cap)
        else:
            keep = (r >= low) & (r <= cap)
            clipped = m & ~keep
            w = r * keep.float()
        return w * ones, clipped
    r_seq = torch.exp(lr.sum(dim=-1).clamp(-_LOG_CLAMP, _LOG_CLAMP))  # (N,)
    has_tok = m.any(dim=-1)
    if correction == "seq-tis":
        clipped = has_tok & (r_seq > cap)
        w_seq = r_seq.clamp(max=cap)
    else:
        keep = (r_seq >= low) & (r_seq <= cap)
        clipped = has_tok & ~keep
        w_seq = r_seq * keep.float()
    return w_seq.unsqueeze(-1) * ones, clipped


def ratio_stats(log_ratio: Tensor, mask: Tensor, weights: Tensor, clipped: Tensor, cap: float,
                prefix: str) -> dict[str, float]:
    """Distribution of one ratio over a batch: token ratio mean / quantiles / max, the share of tokens above the cap
    (whatever the correction), the sequence ratio's median and 95% quantile, the mean weight applied and the share
    of units the correction clipped (truncated or masked)."""
    m = _bool(mask)
    out: dict[str, float] = {}
    if not m.any():
        return out
    lr = log_ratio.detach().float()
    r_tok = torch.exp(lr[m].clamp(-_LOG_CLAMP, _LOG_CLAMP))
    out[f"{prefix}/mean"] = float(r_tok.mean())
    qs = torch.quantile(r_tok, torch.tensor(QUANTILES, dtype=r_tok.dtype))
    for q, v in zip(QUANTILES, qs.tolist()):
        out[f"{prefix}/p{int(round(q * 100)):02d}"] = float(v)
    out[f"{prefix}/max"] = float(r_tok.max())
    out[f"{prefix}/above_cap_frac"] = float((r_tok > cap).float().mean())
    has_tok = m.any(dim=-1)
    seq_lr = torch.where(m, lr, torch.zeros_like(lr)).sum(dim=-1)[has_tok]
    r_seq = torch.exp(seq_lr.clamp(-_LOG_CLAMP, _LOG_CLAMP))
    sq = torch.quantile(r_seq, torch.tensor((0.5, 0.95), dtype=r_seq.dtype))
    out[f"{prefix}/seq_p50"], out[f"{prefix}/seq_p95"] = float(sq[0]), float(sq[1])
    out[f"{prefix}/weight_mean"] = float(weights[m].float().mean())
    units = m if clipped.dim() == 2 else has_tok
    out[f"{prefix}/clipped_frac"] = float(clipped[units].float().mean()) if units.any() else 0.0
    return out


def offpolicy_weights(
    old_logprobs: Tensor,
    engine_policy_logprobs: Tensor,
    cal_logprobs: Tensor,
    mask: Tensor,
    mismatch: str = "none",
    mismatch_cap: float = 2.0,
    mismatch_low: float = 0.0,
    shift: str = "none",
    shift_cap: float = 2.0,
    shift_low: float = 0.0,
) -> tuple[Tensor | None, dict[str, float]]:
    """Per-token importance weights w^mis * w^sft (N, T), or None when both corrections are `none`, and the stats of
    both ratios under `offpolicy/mismatch/*` and `offpolicy/shift/*` (always computed: they are the diagnostics that
    tell whether a correction is needed)."""
    log_mis, log_sft = split_log_ratios(old_logprobs, engine_policy_logprobs, cal_logprobs, mask)
    w_mis, c_mis = correction_weights(log_mis, mask, mismatch, mismatch_cap, mismatch_low)
    w_sft, c_sft = correction_weights(log_sft, mask, shift, shift_cap, shift_low)
    stats = ratio_stats(log_mis, mask, w_mis, c_mis, mismatch_cap, "offpolicy/mismatch")
    stats.update(ratio_stats(log_sft, mask, w_sft, c_sft, shift_cap, "offpolicy/shift"))
    if mismatch == "none" and shift == "none":
        return None, stats
    return w_mis * w_sft, stats


def _check_correction(correction: str, cap: float, low: float) -> None:
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown off-policy correction {correction!r}; choose one of {', '.join(CORRECTIONS)}")
    if not (cap > 0 and math.isfinite(cap)):
        raise ValueError(f"importance-weight cap C must be a finite number > 0 (e.g. 2.0), got {cap!r}")
    if not (0 <= low < cap):
        raise ValueError(f"masked-IS lower bound must be in [0, cap={cap}), got {low!r}")


def _bool(mask: Tensor) -> Tensor:
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (N, T), got shape {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0
