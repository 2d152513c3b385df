"""Rollout stage, token sampling: the pure-PyTorch float32 reference of the fused DLC sampler (docs/ALGORITHMS.md,
"The fused DLC sampler").

    pi_cal(y | ctx) = softmax((z_policy - lam * z_memory) / T), restricted to the allowed tokens

The allowed tokens: all, then the plausibility mask z_policy >= max z_policy + log(tau) (when tau is given),
then top-k of the calibrated scores (ties at the k-th score all kept), then top-p: the smallest set of highest
calibrated scores whose renormalised probability reaches top_p (ties at the threshold all kept). The token is
drawn like the kernel draws it, with the kernel's own Philox streams: a chunk of 1024 ids by Gumbel-max over
log(chunk mass), then an id inside it by Gumbel-max (``two_level_sample``); with ``uniform_noise`` instead
it is argmax(s - log(-log u)) over all ids. Both are exact samplers of pi_cal.
Temperature 0 means greedy: the token is argmax of the masked calibrated scores (first one on ties) and the
log-probabilities are reported at T = 1 so that they stay finite.

Readable and slow on purpose (several full passes, dense (B, V) temporaries); tests and benchmarks import it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .dlc_sample_args import (DLCSampleOutput, FloatArg, IntArg, check_inputs, raise_on_invalid_rows,
                              row_tensor)
from .philox import CHUNK, dlc_chunk_uniforms, dlc_uniforms_in_chunk

LOG2E = 1.0 / math.log(2.0)


def _row_scales(lam: FloatArg, temperature: FloatArg, rows: int, device: torch.device):
    lam_t = row_tensor(lam, rows, torch.float32, device)[:, None]
    temp_t = row_tensor(temperature, rows, torch.float32, device)[:, None]
    greedy = temp_t <= 0
    inv_t = torch.where(greedy, torch.ones_like(temp_t), 1.0 / torch.where(greedy, torch.ones_like(temp_t), temp_t))
    return lam_t, inv_t, greedy


def _mask_top_k_top_p(s: torch.Tensor, allowed: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        masked = torch.where(allowed, s, torch.full_like(s, -math.inf))
        kth = masked.topk(min(top_k, s.shape[1]), dim=1).values[:, -1:]
        allowed = allowed & (s >= kth)
    if top_p < 1.0:
        masked = torch.where(allowed, s, torch.full_like(s, -math.inf))
        ranked = masked.sort(dim=1, descending=True).values
        cum = torch.softmax(ranked, dim=1).cumsum(1)
        idx = (cum < top_p * cum[:, -1:]).sum(1, keepdim=True).clamp(max=s.shape[1] - 1)
        allowed = allowed & (s >= ranked.gather(1, idx))
    return allowed


def two_level_sample(s2: torch.Tensor, greedy: torch.Tensor, seed: IntArg, offset: IntArg,
                     vocab_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's RNG-mode draw from scores s2 (B, V) in log2 units (masked ids -inf): global token ids (B,)
    (-1 if nothing is allowed) and the winning chunk's key log2(mass) - log2(-log2 u) (greedy: its max score)."""
    rows, vocab = s2.shape
    device = s2.device
    seed_t = row_tensor(seed, rows, torch.int64, device)
    offset_t = row_tensor(offset, rows, torch.int64, device)
    lead = vocab_offset % CHUNK
    n_chunks = -(-(lead + vocab) // CHUNK)
    padded = torch.full((rows, n_chunks * CHUNK), -math.inf, dtype=torch.float32, device=device)
    padded[:, lead:lead + vocab] = torch.nan_to_num(s2, nan=-math.inf)
    chunks = padded.view(rows, n_chunks, CHUNK)
    chunk_ids = torch.arange(n_chunks, device=device) + vocab_offset // CHUNK
    part = torch.where(chunk_ids * CHUNK < vocab_offset, 2, 1)
    u_chunk = dlc_chunk_uniforms(seed_t, offset_t, chunk_ids, part)
    mass = torch.logsumexp(chunks * math.log(2.0), dim=2) * LOG2E  # log2 of each chunk's mass
    key = torch.where(greedy, chunks.amax(2), mass - torch.log2(-torch.log2(u_chunk)))
    win = torch.argmax(key, dim=1)  # first maximum: smallest id on ties
    ids = chunk_ids[win][:, None] * CHUNK + torch.arange(CHUNK, device=device)  # (B, 1024) global ids
    inside = chunks[torch.arange(rows, device=device), win]
    u_ids = dlc_uniforms_in_chunk(seed_t, offset_t, chunk_ids[win])
    race = torch.where(greedy, inside, inside - torch.log2(-torch.log2(u_ids)))
    pick = torch.argmax(race, dim=1, keepdim=True)
    token = torch.where(race.gather(1, pick)[:, 0] == -math.inf, -1, ids.gather(1, pick)[:, 0])
    return token, key.gather(1, win[:, None])[:, 0]


def dlc_sample_reference(
    policy_logits: torch.Tensor,
    memory_logits: Optional[torch.Tensor] = None,
    lam: FloatArg = 0.0,
    temperature: FloatArg = 1.0,
    seed: IntArg = 0,
    offset: IntArg = 0,
    tau: Optional[float] = None,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_offset: int = 0,
    return_entropy: bool = False,
    uniform_noise: Optional[torch.Tensor] = None,
    *,
    check_nan: bool = True,
) -> DLCSampleOutput:
    """DLC sampling in float32 PyTorch; same arguments and outputs as ``dlc_sample``."""
    check_inputs(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p, uniform_noise)
    rows, vocab = policy_logits.shape
    device = policy_logits.device
    zp = policy_logits.to(torch.float32)
    lam_t, inv_t, greedy = _row_scales(lam, temperature, rows, device)
    s = zp if memory_logits is None else zp - lam_t * memory_logits.to(torch.float32)
    s = s * inv_t  # (B, V) calibrated logits at temperature T

    allowed = torch.ones_like(s, dtype=torch.bool)
    if tau is not None:
        allowed &= zp >= zp.amax(1, keepdim=True) + torch.tensor(math.log(tau), dtype=torch.float32)
    allowed = _mask_top_k_top_p(s, allowed, top_k, top_p)
    s_cal = torch.where(allowed | torch.isnan(s), s, torch.full_like(s, -math.inf))

    logp_cal = torch.log_softmax(s_cal, dim=1)
    logp_pol = torch.log_softmax(zp * inv_t, dim=1)
    if uniform_noise is not None:
        race = torch.where(greedy, s_cal, s_cal - torch.log(-torch.log(uniform_noise.to(torch.float32))))
        local = torch.argmax(torch.nan_to_num(race, nan=-math.inf), dim=1)
    else:
        token, _ = two_level_sample(s_cal * LOG2E, greedy, seed, offset, vocab_offset)
        local = (token - vocab_offset).clamp(min=0)

    bad = torch.isnan(s_cal).any(1) | torch.isnan(zp).any(1) | ~torch.isfinite(torch.logsumexp(s_cal, 1))
    bad |= ~torch.isfinite(torch.logsumexp(zp * inv_t, 1))
    nan = torch.full((rows,), math.nan, dtype=torch.float32, device=device)
    entropy = None
    if return_entropy:
        plogp = torch.where(allowed, logp_cal.exp() * logp_cal, torch.zeros_like(logp_cal))
        entropy = torch.where(bad, nan, -plogp.sum(1))
    out = DLCSampleOutput(
        tokens=torch.where(bad, torch.full_like(local, -1), local + vocab_offset),
        logprob_cal=torch.where(bad, nan, logp_cal.gather(1, local[:, None])[:, 0]),
        logprob_policy=torch.where(bad, nan, logp_pol.gather(1, local[:, None])[:, 0]),
        entropy=entropy,
    )
    if check_nan:
        raise_on_invalid_rows(out)
    return out


def dlc_partials_reference(
    policy_logits: torch.Tensor,
    memory_logits: Optional[torch.Tensor],
    lam: FloatArg,
    temperature: FloatArg,
    seed: IntArg,
    offset: IntArg,
    vocab_offset: int,
    uniform_noise: Optional[torch.Tensor],
    policy_threshold: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial statistics (B, 1, 8) and (B, 1) of a vocabulary range (see ``dlc_sample_args``), in float32.

    ``policy_threshold`` (B,) is the tau mask's max z_policy + log(tau) over the whole vocabulary, or None.
    """
    rows, vocab = policy_logits.shape
    device = policy_logits.device
    zp = policy_logits.to(torch.float32)
    lam_t, inv_t, greedy = _row_scales(lam, temperature, rows, device)
    a = inv_t * LOG2E
    p2 = zp * a
    s2 = p2 if memory_logits is None else p2 - memory_logits.to(torch.float32) * (lam_t * a)
    if policy_threshold is not None:
        keep = zp >= policy_threshold.to(torch.float32)[:, None]
        s2 = torch.where(keep | torch.isnan(s2), s2, torch.full_like(s2, -math.inf))

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = x.amax(1)
        ms = torch.where(m == -math.inf, torch.zeros_like(m), m)
        d = x - ms[:, None]
        e = torch.exp2(d)
        return m, e.sum(1), torch.where(e > 0, e * d, torch.zeros_like(e)).sum(1)

    m, l, t = stats(s2)
    mp, lp, _ = stats(p2)
    if uniform_noise is not None:
        race = torch.where(greedy, s2, s2 - torch.log2(-torch.log2(uniform_noise.to(torch.float32))))
        race = torch.nan_to_num(race, nan=-math.inf)
        local = torch.argmax(race, dim=1, keepdim=True)
        best = race.gather(1, local)[:, 0]
        tok = torch.where(best == -math.inf, torch.full_like(local[:, 0], -1), local[:, 0] + vocab_offset)
    else:
        tok, best = two_level_sample(s2, greedy, seed, offset, vocab_offset)
        local = (tok - vocab_offset).clamp(min=0)[:, None]
    part = torch.stack([m, l, t, mp, lp, best, s2.gather(1, local)[:, 0], p2.gather(1, local)[:, 0]], dim=-1)
    return part[:, None, :], tok[:, None]
