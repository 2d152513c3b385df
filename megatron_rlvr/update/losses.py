"""Policy-update stage: PPO clipped surrogate, loss aggregation, KL to a reference, entropy bonus, and the
truncated importance weight of DLC (docs/ALGORITHMS.md: "Policy loss", "DAPO", "DLC").

Per token t of response i (ratio rho = pi_theta / pi_old, advantage A_i broadcast to the tokens):

    pg_it   = max(-A_i * rho_it, -A_i * clip(rho_it, 1 - eps_low, 1 + eps_high)) * w_it
              (with the dual clip, for A_i < 0: min(that max, -A_i * c) before the weight; off by default,
               on by default in verl with c = 3)
    loss_it = pg_it + kl_coef * KL_it - entropy_coef * H_it

where w_it is the optional off-policy importance weight (no gradient): the legacy DLC truncated weight
min(pi_old / pi_cal, C) of `tis_weights`, or the product of the separated mismatch and shift corrections of
`megatron_rlvr.update.offpolicy.offpolicy_weights` (token- or sequence-level, truncated or masked), and
KL_it one of the k1/k2/k3 estimators of KL(pi_theta || pi_ref) (Schulman, "Approximating KL divergence").

Aggregation and exact micro-batching
------------------------------------
The trainer splits a global batch into micro-batches and *sums* their gradients. Each mode is a sum of
per-token or per-sequence terms divided by a denominator that is a property of the GLOBAL batch, so passing
that global denominator to every micro-batch makes the sum of micro-batch losses equal the full-batch loss
exactly (and likewise across data-parallel ranks when the counts are all-reduced and the gradients summed):

- `token-mean` (DAPO, token-level):  sum_{i,t} m_it loss_it / global_token_count
- `seq-mean-token-mean` (GRPO):      sum_i [ sum_t m_it loss_it / n_i ] / global_seq_count
- `seq-mean-token-sum-norm` (Dr.GRPO): sum_{i,t} m_it loss_it / (max_response_len * global_seq_count)
  (a configured constant; verl's default divisor is the batch's padded width, which changes with micro-batching)

with m the response mask, n_i = sum_t m_it the length of response i, global_token_count the number of
response tokens and global_seq_count the number of responses with at least one response token in the global
batch (`count_loss_units` gives both for one micro-batch; sum them over micro-batches and ranks).
`max_response_len` must be the configured constant L_max, never the padded width of a micro-batch, which
changes from micro-batch to micro-batch. Left as None, the counts default to those of the tensors passed in,
which is right only when they are the whole batch.

Padding positions (m = 0) may hold anything, even NaN or inf: they are replaced before any arithmetic, so
they reach neither the loss nor the gradients.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from megatron_rlvr.registry import KL_ESTIMATORS as _KL
from megatron_rlvr.registry import LOSS_AGGREGATIONS as _AGG

LOSS_AGG_MODES = _AGG.names()  # megatron_rlvr.registry.LOSS_AGGREGATIONS
KL_ESTIMATORS = _KL.names()  # megatron_rlvr.registry.KL_ESTIMATORS
# exp() of log-ratios beyond this overflows float32 or is meaningless; verl clamps at the same bound
_LOG_RATIO_CLAMP = 20.0


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from tokens sampled by pi_theta (shapes preserved).

    With log_r = log pi_ref - log pi_theta:  k1 = -log_r (unbiased, can be negative),
    k2 = log_r^2 / 2 (biased, low variance), k3 = exp(log_r) - 1 - log_r (unbiased, >= 0).
    log_r is clamped to [-20, 20] for k3 only, where exp would otherwise overflow. Unlike verl's `low_var_kl`, the
    k3 estimate itself is not clamped (to [-10, 10] there): a clamp would zero the KL gradient of exactly the tokens
    that drifted most.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must have one shape"
        )
    return _KL.load(kind)(ref_logprobs - logprobs)


# Registered KL estimators (megatron_rlvr.registry.KL_ESTIMATORS), of log_r = log pi_ref - log pi_theta.
def kl_k1(log_r: Tensor) -> Tensor:
    return -log_r


def kl_k2(log_r: Tensor) -> Tensor:
    return 0.5 * log_r * log_r


def kl_k3(log_r: Tensor) -> Tensor:
    log_r = log_r.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.exp(log_r) - 1.0 - log_r


def tis_weights(old_logprobs: Tensor, cal_logprobs: Tensor, cap: float) -> Tensor:
    """DLC off-policy correction min(pi_old / pi_cal, cap) per token, without gradient (docs/ALGORITHMS.md, "DLC").

    Rollouts are drawn from pi_cal = softmax((z_theta - lambda z_phi) / T), not from pi_old, so the
    surrogate is reweighted by the truncated importance ratio (truncation bounds the variance).
    """
    if not (cap > 0 and math.isfinite(cap)):
        raise ValueError(f"TIS cap C must be a finite number > 0 (e.g. 2.0), got {cap!r}")
    if old_logprobs.shape != cal_logprobs.shape:
        raise ValueError(
            f"old_logprobs {tuple(old_logprobs.shape)} and cal_logprobs {tuple(cal_logprobs.shape)} differ in shape"
        )
    log_w = (old_logprobs - cal_logprobs).detach().float()
    return torch.exp(log_w.clamp(max=math.log(cap)))


def count_loss_units(mask: Tensor) -> tuple[int, int]:
    """(response tokens, responses with >= 1 token) of one (micro-)batch: the parts of the global denominators.

    Sum both over all micro-batches (and all-reduce over data-parallel ranks) before calling `policy_loss`.
    """
    m = _as_bool_mask(mask)
    return int(m.sum()), int(m.any(dim=-1).sum())


def aggregate(
    values: Tensor,
    mask: Tensor,
    loss_agg: str,
    max_response_len: int | None = None,
    global_token_count: int | None = None,
    global_seq_count: int | None = None,
) -> Tensor:
    """Reduce per-token values (N, T) to a scalar by `loss_agg`, with the denominators of the module docstring."""
    if loss_agg not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; choose one of {', '.join(LOSS_AGG_MODES)}")
    m = _as_bool_mask(mask)
    masked = torch.where(m, values, torch.zeros_like(values))
    return _AGG.load(loss_agg)(masked, m, values, max_response_len, global_token_count, global_seq_count)


# Registered aggregations (megatron_rlvr.registry.LOSS_AGGREGATIONS): masked values (N, T) and the bool mask -> scalar.
def token_mean(masked: Tensor, m: Tensor, values: Tensor, max_response_len: int | None,
               global_token_count: int | None, global_seq_count: int | None) -> Tensor:
    return masked.sum() / _denominator(global_token_count, int(m.sum()), "global_token_count")


def seq_mean_token_mean(masked: Tensor, m: Tensor, values: Tensor, max_response_len: int | None,
                        global_token_count: int | None, global_seq_count: int | None) -> Tensor:
    num_seqs = _denominator(global_seq_count, int(m.any(dim=-1).sum()), "global_seq_count")
    lengths = m.sum(dim=-1).clamp_min(1).to(values.dtype)  # empty rows contribute 0, not 0/0
    return (masked.sum(dim=-1) / lengths).sum() / num_seqs


def seq_mean_token_sum_norm(masked: Tensor, m: Tensor, values: Tensor, max_response_len: int | None,
                            global_token_count: int | None, global_seq_count: int | None) -> Tensor:
    num_seqs = _denominator(global_seq_count, int(m.any(dim=-1).sum()), "global_seq_count")
    if max_response_len is None or max_response_len <= 0:
        raise ValueError(
            "loss_agg 'seq-mean-token-sum-norm' (Dr.GRPO) divides by a constant: pass max_response_len = the "
            f"configured maximum response length (> 0), got {max_response_len!r}"
        )
    return masked.sum() / (float(max_response_len) * num_seqs)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    loss_agg: str = "token-mean",
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    tis_weights: Tensor | None = None,
    max_response_len: int | None = None,
    global_token_count: int | None = None,
    global_seq_count: int | None = None,
    clip_ratio_c: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped policy loss of one (micro-)batch, aggregated by `loss_agg` (module docstring).

    Args:
        logprobs: (N, T) log pi_theta of the response tokens, with gradient.
        old_logprobs: (N, T) log pi_old from before this update (no gradient is taken through them).
        advantages: (N,) one advantage per response, broadcast over its tokens.
        mask: (N, T) bool or 0/1, True on response tokens, False on prompt/padding.
        clip_eps_low, clip_eps_high: ratio clip range [1 - low, 1 + high]; DAPO's clip-higher uses 0.2/0.28.
        loss_agg: one of LOSS_AGG_MODES.
        ref_logprobs: (N, T) log pi_ref for the KL penalty; needed when kl_coef > 0.
        kl_coef, kl_estimator: weight and estimator ('k1' | 'k2' | 'k3') of the KL(pi_theta || pi_ref) term.
        entropy: (N, T) per-token entropy of pi_theta with gradient; needed when entropy_coef > 0.
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        tis_weights: (N, T) off-policy importance weights (`tis_weights`, or `offpolicy_weights` of the
            offpolicy module), or None.
        max_response_len: constant L_max for 'seq-mean-token-sum-norm'.
        global_token_count, global_seq_count: global denominators for exact micro-batching.
        clip_ratio_c: PPO dual-clip constant c > 1 (Ye et al. 2020, as in verl): for negative advantages the
            per-token surrogate is capped at -A * c, so a token whose ratio exploded cannot dominate the loss.
            None disables it.

    Returns:
        (loss scalar, stats) with detached scalar tensors: `pg_loss` (the surrogate part, same aggregation),
        and token means over this micro-batch's mask: `pg_clipfrac` (share of tokens whose clipped branch is
        active), `approx_kl` (k3 estimate of KL(pi_old || pi_theta)), `ratio_mean`, `ratio_max`, plus `kl`,
        `entropy` and `tis_weight_mean` when those inputs are given, and `num_tokens`.
    """
    _check_policy_inputs(logprobs, old_logprobs, advantages, mask, clip_eps_low, clip_eps_high)
    m = _as_bool_mask(mask)
    zeros = torch.zeros_like(logprobs, dtype=torch.float32)
    # sanitise padding first, so NaN/inf there never meets exp() and cannot leak into gradients
    lp = torch.where(m, logprobs.float(), zeros)
    old = torch.where(m, old_logprobs.detach().float(), zeros)
    adv = advantages.detach().float().unsqueeze(-1)  # (N, 1)

    log_ratio = (lp - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # (N, T)
    surr_unclipped = -adv * ratio
    surr_clipped = -adv * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    pg = torch.maximum(surr_unclipped, surr_clipped)
    dual = None
    if clip_ratio_c is not None:
        if not clip_ratio_c > 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (e.g. 3.0), got {clip_ratio_c!r}")
        capped = -adv * clip_ratio_c  # (N, 1): the bound of the surrogate for A < 0
        dual = (adv < 0) & (pg > capped)
        pg = torch.where(adv < 0, torch.minimum(pg, capped), pg)
    if tis_weights is not None:
        if tis_weights.shape != logprobs.shape:
            raise ValueError(f"tis_weights must have shape {tuple(logprobs.shape)}, got {tuple(tis_weights.shape)}")
        w = torch.where(m, tis_weights.detach().float(), zeros)
        pg = pg * w
    agg_kwargs = dict(
        max_response_len=max_response_len, global_token_count=global_token_count, global_seq_count=global_seq_count
    )
    per_token = pg

    kl = None
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError(
            "kl_coef > 0 needs ref_logprobs (log-probs of the reference policy); pass them or set kl_coef=0"
        )
    if ref_logprobs is not None:
        ref = torch.where(m, ref_logprobs.detach().float(), zeros)
        kl = kl_estimate(lp, ref, kl_estimator)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
    if entropy_coef > 0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs the per-token entropy of the policy; pass entropy or set it to 0")
    ent = None
    if entropy is not None:
        ent = torch.where(m, entropy.float(), zeros)
        if entropy_coef > 0:
            per_token = per_token - entropy_coef * ent

    loss = aggregate(per_token, m, loss_agg, **agg_kwargs)

    with torch.no_grad():
        n_tok = m.sum().clamp_min(1)

        def token_mean(x: Tensor) -> Tensor:
            return torch.where(m, x, zeros).sum() / n_tok

        stats = {
            "pg_loss": aggregate(pg.detach(), m, loss_agg, **agg_kwargs),
            "pg_clipfrac": token_mean((surr_clipped > surr_unclipped).float()),
            "approx_kl": token_mean(kl_estimate(old, lp.detach(), "k3")),
            "ratio_mean": token_mean(ratio.detach()),
            "ratio_max": torch.where(m, ratio.detach(), zeros).max() if m.any() else zeros.sum(),
            "num_tokens": m.sum().float(),
        }
        if dual is not None:
            stats["pg_clipfrac_lower"] = token_mean(dual.float())  # tokens the dual clip bounded
        if kl is not None:
            stats["kl"] = token_mean(kl.detach())
        if ent is not None:
            stats["entropy"] = token_mean(ent.detach())
        if tis_weights is not None:
            stats["tis_weight_mean"] = token_mean(w)
    return loss, stats


def _denominator(given: int | None, local: int, name: str) -> float:
    if given is None:
        return float(max(local, 1))  # an all-padding micro-batch yields loss 0, not NaN
    if given <= 0:
        raise ValueError(f"{name} must be > 0 (summed over all micro-batches and ranks), got {given}")
    return float(given)


def _as_bool_mask(mask: Tensor) -> Tensor:
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (N, T), got shape {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_policy_inputs(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (N, T), got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("mask", mask)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(t.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be (N,) = ({logprobs.shape[0]},), one per response, got {tuple(advantages.shape)}"
        )
    if not (0.0 <= eps_low < 1.0) or not (eps_high >= 0.0):
        raise ValueError(
            f"clip range needs 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got low={eps_low}, high={eps_high} "
            "(PPO uses 0.2/0.2, DAPO clip-higher 0.2/0.28)"
        )
