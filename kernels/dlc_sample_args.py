"""Rollout stage, token sampling: the DLC sampler's output type, argument checks and partial-statistics algebra.

Shared by the Triton launcher, the PyTorch reference and the vocabulary-parallel form. The partial statistics
of a vocabulary range (one split of a row, or one tensor-parallel shard) are eight float32 numbers and a token:

    m   max calibrated score s2 over allowed ids          (log2 units: s2 = log2(e) * (z_p - lam z_m) / T)
    l   sum 2**(s2 - m)                                    t   sum 2**(s2 - m) * (s2 - m)   (for the entropy)
    mp  max policy score p2 = log2(e) * z_p / T           lp  sum 2**(p2 - mp)            (full range, unmasked)
    bs  best race score of the range                       s2b, p2b  the scores of its winner;  tok  its id

They merge associatively (``merge_partials``), which is what makes the split launch and the sharded vocabulary
give the distribution of the unsharded kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

LN2 = math.log(2.0)
FloatArg = Union[float, torch.Tensor]
IntArg = Union[int, torch.Tensor]
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass
class DLCSampleOutput:
    """Per-row results of one DLC sampling step.

    The Triton launcher returns them as pieces of one fresh buffer per call (with that call's scratch): ordinary
    tensors, never reused by a later call; ``.clone()`` one to keep it without the rest of the buffer."""

    tokens: torch.Tensor
    """(B,) int64 global vocabulary ids; -1 marks an invalid row (only when ``check_nan=False``)."""
    logprob_cal: torch.Tensor
    """(B,) float32 log pi_cal(token) at temperature T, after the tau/top-k/top-p mask, renormalised."""
    logprob_policy: torch.Tensor
    """(B,) float32 log softmax(z_policy / T)[token] over the full vocabulary, no masking."""
    entropy: Optional[torch.Tensor]
    """(B,) float32 entropy of pi_cal (nats) when ``return_entropy``, else None."""


class DLCInvalidRowError(ValueError):
    """A row's logits contain NaN or +inf (after calibration) or the mask left no token to sample."""


def check_inputs(policy: torch.Tensor, memory: Optional[torch.Tensor], lam: FloatArg, temperature: FloatArg,
                 seed: IntArg, offset: IntArg, tau: Optional[float], top_k: int, top_p: float,
                 uniform_noise: Optional[torch.Tensor]) -> None:
    """Raise ValueError naming the bad argument and the fix; tensors are checked for shape, dtype and device."""
    if policy.dim() != 2:
        raise ValueError(f"policy_logits must be (B, V), got shape {tuple(policy.shape)}; flatten extra dims first")
    if policy.dtype not in _DTYPES:
        raise ValueError(f"policy_logits dtype {policy.dtype} unsupported; use bfloat16, float16 or float32")
    if policy.shape[1] < 1:
        raise ValueError("policy_logits has an empty vocabulary dimension")
    rows = policy.shape[0]
    if memory is not None:
        if memory.shape != policy.shape:
            raise ValueError(f"memory_logits shape {tuple(memory.shape)} != policy_logits shape "
                             f"{tuple(policy.shape)}; both models must share the vocabulary (and its padding)")
        if memory.dtype not in _DTYPES:
            raise ValueError(f"memory_logits dtype {memory.dtype} unsupported; use bfloat16, float16 or float32")
        if memory.device != policy.device:
            raise ValueError(f"memory_logits on {memory.device} but policy_logits on {policy.device}")
    if uniform_noise is not None:
        if uniform_noise.shape != policy.shape or uniform_noise.device != policy.device:
            raise ValueError("uniform_noise must have the shape and device of policy_logits")
        if not uniform_noise.is_floating_point():
            raise ValueError("uniform_noise must be a float tensor of uniforms in (0, 1)")
    _check_float_arg("lam", lam, rows, policy.device)
    _check_float_arg("temperature", temperature, rows, policy.device)
    _check_int_arg("seed", seed, rows, policy.device)
    _check_int_arg("offset", offset, rows, policy.device)
    if tau is not None and not (isinstance(tau, (int, float)) and 0.0 < tau <= 1.0):
        raise ValueError(f"tau must be None or a float in (0, 1], got {tau!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a float in (0, 1] (1 disables it), got {top_p!r}")


def _check_float_arg(name: str, value: FloatArg, rows: int, device: torch.device) -> None:
    if type(value) is float and 0.0 <= value < math.inf:  # the common case, decided in one comparison chain
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != rows or value.device != device:
            raise ValueError(f"{name} tensor must have B={rows} elements on {device}, "
                             f"got {value.numel()} on {value.device}")
    elif not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite float >= 0 (or a (B,) tensor), got {value!r}")


def _check_int_arg(name: str, value: IntArg, rows: int, device: torch.device) -> None:
    if type(value) is int:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != rows or value.device != device or value.is_floating_point():
            raise ValueError(f"{name} tensor must be (B,)={rows} integers on {device}")
    elif not isinstance(value, int):
        raise ValueError(f"{name} must be an int or a (B,) int64 tensor, got {type(value).__name__}")


def row_tensor(value: Union[FloatArg, IntArg], rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (B,) tensor of a per-row argument given as a scalar or as a tensor."""
    if isinstance(value, torch.Tensor):
        return value.reshape(rows).to(device=device, dtype=dtype)
    return torch.full((rows,), value, dtype=dtype, device=device)


def merge_partials(part_f: torch.Tensor, part_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge (B, S, 8) float partials and (B, S) tokens, ordered by increasing vocabulary id, into (B, 8), (B,)."""
    part_f = part_f.to(torch.float32)
    m, l, t, mp, lp, bs, s2b, p2b = part_f.unbind(-1)
    big_m = m.amax(1)
    ms = torch.where(big_m == -math.inf, torch.zeros_like(big_m), big_m)
    w = torch.exp2(m - ms[:, None])
    rel = torch.where(l > 0, w * (t + (m - ms[:, None]) * l), torch.zeros_like(t))
    big_mp = mp.amax(1)
    mps = torch.where(big_mp == -math.inf, torch.zeros_like(big_mp), big_mp)
    # First (lowest-id) range holding the best score: ties resolve to the smallest id, as torch.argmax does.
    first = torch.argmax(bs, dim=1, keepdim=True)
    merged = torch.stack([
        big_m, (l * w).sum(1), rel.sum(1), big_mp, (lp * torch.exp2(mp - mps[:, None])).sum(1),
        bs.gather(1, first)[:, 0], s2b.gather(1, first)[:, 0], p2b.gather(1, first)[:, 0],
    ], dim=-1)
    return merged, part_i.gather(1, first)[:, 0].to(torch.int64)


def finalize_partials(merged: torch.Tensor, tokens: torch.Tensor, return_entropy: bool) -> DLCSampleOutput:
    """Outputs of rows from their merged statistics; invalid rows get token -1 and NaN log-probabilities."""
    m, l, t, mp, lp, bs, s2b, p2b = merged.to(torch.float32).unbind(-1)
    ms = torch.where(m == -math.inf, torch.zeros_like(m), m)
    mps = torch.where(mp == -math.inf, torch.zeros_like(mp), mp)
    lp_cal = (s2b - (ms + torch.log2(l))) * LN2
    lp_pol = (p2b - (mps + torch.log2(lp))) * LN2
    bad = ~torch.isfinite(l) | ~torch.isfinite(lp) | (l <= 0) | (tokens < 0) | torch.isnan(bs)
    bad |= torch.isnan(lp_cal) | torch.isnan(lp_pol)
    nan = torch.full_like(lp_cal, math.nan)
    entropy = None
    if return_entropy:
        entropy = torch.where(bad, nan, (torch.log2(l) - t / l) * LN2)
    return DLCSampleOutput(
        tokens=torch.where(bad, torch.full_like(tokens, -1), tokens),
        logprob_cal=torch.where(bad, nan, lp_cal),
        logprob_policy=torch.where(bad, nan, lp_pol),
        entropy=entropy,
    )


def raise_on_invalid_rows(out: DLCSampleOutput) -> None:
    """The default guard: never hand back a token drawn from NaN logits (costs one device sync)."""
    bad = out.tokens < 0
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:8].tolist()
        raise DLCInvalidRowError(
            f"DLC sampling: {int(bad.sum())} row(s) (first: {rows}) have NaN or +inf calibrated/policy logits or "
            "no token left after the tau/top-k/top-p mask. Check the models' logits; pass check_nan=False to "
            "get token -1 and NaN log-probs for such rows instead (needed under CUDA-graph capture).")
