"""Rollout stage, token sampling: the launcher of the fused DLC sampling kernel (``dlc_sample``).

Picks the backend (Triton on CUDA tensors or under TRITON_INTERPRET=1, the float32 reference otherwise),
the split-vocabulary grid (small batches spread each row over many programs so the whole GPU streams the
logits; large batches use one program per row and finish in the same launch) and the tile size, then runs:

    [dlc_threshold_kernel]   only with tau / top-k / top-p
    dlc_stage1_kernel        one pass over policy + memory logits (the last program of a split row merges it)
    [dlc_combine_kernel]     only for a split row launched without an arrival counter (see _arrival_counters)

Memory use: (B, S, 8) float32 + (B, S) int32 partials for the split launch and one float32 per (row, chunk of
1024 ids) for the first sampling level, nothing of size V.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Optional

import torch

from . import dlc_sample_kernel as _k
from .dlc_sample_args import (DLCSampleOutput, FloatArg, IntArg, check_inputs, raise_on_invalid_rows)
from .dlc_sample_reference import dlc_partials_reference, dlc_sample_reference

# Split heuristic (tuned on an H100 with tools/bench_kernels.py --sweep, see BENCHMARKS.md): aim for
# PROGRAMS_PER_SM programs per SM, at least MIN_CHUNKS_PER_SPLIT chunks of 1024 ids each (thinner splits cost
# more in the per-split second sampling level and the combine than they gain), and tiles of up to
# MAX_TILE_CHUNKS chunks per loop iteration (LARGE_BATCH_TILE_CHUNKS once rows alone fill the GPU 4 times).
PROGRAMS_PER_SM = 3
MIN_CHUNKS_PER_SPLIT = 2
MAX_TILE_CHUNKS = 4
LARGE_BATCH_TILE_CHUNKS = 2


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(tensor: torch.Tensor, backend: Optional[str]) -> str:
    """'triton' for CUDA tensors or under TRITON_INTERPRET=1, else 'torch'; an explicit backend wins."""
    if backend is not None:
        if backend not in ("triton", "torch"):
            raise ValueError(f"backend must be 'triton', 'torch' or None, got {backend!r}")
        if backend == "triton" and not tensor.is_cuda and not _interpret():
            raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 for the CPU interpreter")
        return backend
    return "triton" if (tensor.is_cuda or _interpret()) else "torch"


@lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _split_plan(rows: int, vocab: int, vocab_offset: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """(chunk_lo, chunk_hi, splits, chunks_per_split, tile_chunks) for a (rows, vocab) launch."""
    chunk_lo = vocab_offset // _k.CHUNK
    chunk_hi = -(-(vocab_offset + vocab) // _k.CHUNK)
    n_chunks = chunk_hi - chunk_lo
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 1
    splits = max(1, min(-(-n_chunks // MIN_CHUNKS_PER_SPLIT), -(-PROGRAMS_PER_SM * sms // rows)))
    per_split = -(-n_chunks // splits)
    splits = -(-n_chunks // per_split)
    max_tile = LARGE_BATCH_TILE_CHUNKS if rows >= 4 * sms else MAX_TILE_CHUNKS
    tile = 1
    while tile < min(per_split, max_tile):
        tile *= 2
    if _interpret():  # the interpreter pays per operation, not per element: one big tile
        tile = 1 << max(0, (per_split - 1).bit_length())
    return chunk_lo, chunk_hi, splits, per_split, tile


_COUNTERS: dict = {}


def _arrival_counters(rows: int, device: torch.device) -> Optional[torch.Tensor]:
    """A zeroed int32 arrival counter per row for split launches, one buffer per device; None if unavailable.

    The kernel's last program of a row resets its counter, so the buffer is zeroed once and reused by every later
    call and CUDA-graph replay. One buffer per device (not per stream) so that a graph captured on a side stream
    after an eager warm-up uses it too; the price: calls on one device must not run concurrently on two streams
    (a decode loop calls the sampler on one stream). A graph capture that finds no buffer large enough falls back
    to the separate combine kernel, since a new buffer cannot be zeroed outside the graph.
    """
    if device.type != "cuda":
        return None if not _interpret() else torch.zeros(rows, dtype=torch.int32, device=device)
    key = device.index if device.index is not None else torch.cuda.current_device()
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < rows:
        if torch.cuda.is_current_stream_capturing():
            return None
        buf = torch.zeros(max(rows, 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def _scalar_or_ptr(value, dtype: torch.dtype, device: torch.device, dummy: torch.Tensor):
    """(pointer, scalar, is_tensor) kernel arguments for a per-row parameter."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).to(device=device, dtype=dtype).contiguous(), 0.0, True
    return dummy, float(value), False


def _int_halves(value: int) -> tuple[int, int]:
    """A Python int as two int32 kernel arguments carrying the low and high uint32 words."""
    value &= (1 << 64) - 1
    lo, hi = value & 0xFFFFFFFF, value >> 32
    return tuple(w - (1 << 32) if w >= (1 << 31) else w for w in (lo, hi))


def _launch(policy: torch.Tensor, memory: Optional[torch.Tensor], lam: FloatArg, temperature: FloatArg,
            seed: IntArg, offset: IntArg, tau: Optional[float], top_k: int, top_p: float, vocab_offset: int,
            return_entropy: bool, uniform_noise: Optional[torch.Tensor], policy_max: Optional[torch.Tensor],
            partials_only: bool):
    rows, vocab = policy.shape
    device = policy.device
    policy = policy if policy.stride(1) == 1 else policy.contiguous()
    if memory is not None and memory.stride(1) != 1:
        memory = memory.contiguous()
    if uniform_noise is not None and uniform_noise.stride(1) != 1:
        uniform_noise = uniform_noise.contiguous()
    dummy_f = torch.empty(1, dtype=torch.float32, device=device)
    dummy_i = torch.empty(1, dtype=torch.int64, device=device)
    lam_p, lam_v, lam_t = _scalar_or_ptr(lam, torch.float32, device, dummy_f)
    temp_p, temp_v, temp_t = _scalar_or_ptr(temperature, torch.float32, device, dummy_f)
    if isinstance(seed, torch.Tensor):
        seed_p, (seed_lo, seed_hi), seed_t = seed.reshape(-1).to(device, torch.int64).contiguous(), (0, 0), True
    else:
        seed_p, (seed_lo, seed_hi), seed_t = dummy_i, _int_halves(seed), False
    if isinstance(offset, torch.Tensor):
        off_p, (off_lo, off_hi), off_t = offset.reshape(-1).to(device, torch.int64).contiguous(), (0, 0), True
    else:
        off_p, (off_lo, off_hi), off_t = dummy_i, _int_halves(offset), False
    mem = memory if memory is not None else policy
    noise = uniform_noise if uniform_noise is not None else policy

    has_mask = tau is not None or top_k > 0 or top_p < 1.0
    pthr = sthr = dummy_f
    if has_mask:
        pthr = torch.empty(rows, dtype=torch.float32, device=device)
        sthr = torch.empty(rows, dtype=torch.float32, device=device)
        block = min(_next_pow2(vocab), 8192 if _interpret() else 4096)
        _k.dlc_threshold_kernel[(rows,)](
            policy, mem, policy.stride(0), mem.stride(0), lam_p, lam_v, temp_p, temp_v,
            pthr, sthr, policy_max if policy_max is not None else dummy_f, vocab,
            math.log(tau) if tau is not None else 0.0, top_k, float(top_p),
            HAS_MEMORY=memory is not None, LAM_T=lam_t, TEMP_T=temp_t, HAS_TAU=tau is not None,
            PMAX_GIVEN=policy_max is not None, HAS_TOPK=top_k > 0, HAS_TOPP=top_p < 1.0, BLOCK=block,
            num_warps=8,
        )

    chunk_lo, chunk_hi, splits, per_split, tile = _split_plan(rows, vocab, vocab_offset, device)
    finalize = splits == 1 and not partials_only
    tokens = torch.empty(rows, dtype=torch.int64, device=device)
    lp_cal = torch.empty(rows, dtype=torch.float32, device=device)
    lp_pol = torch.empty(rows, dtype=torch.float32, device=device)
    entropy = torch.empty(rows, dtype=torch.float32, device=device) if return_entropy else dummy_f
    part_f = part_i = dummy_f
    counters = None
    if not finalize:
        part_f = torch.empty(rows, splits, 8, dtype=torch.float32, device=device)
        part_i = torch.empty(rows, splits, dtype=torch.int32, device=device)
        if not partials_only:
            counters = _arrival_counters(rows, device)
    # Per (row, split) the log2 mass of each of its chunks (RNG mode only): written and read by one program.
    chunk_vals = dummy_f if uniform_noise is not None else torch.empty(
        rows * splits * per_split, dtype=torch.float32, device=device)
    _k.dlc_stage1_kernel[(rows, splits)](
        policy, mem, noise, policy.stride(0), mem.stride(0), noise.stride(0),
        lam_p, lam_v, temp_p, temp_v, seed_p, seed_lo, seed_hi, off_p, off_lo, off_hi,
        pthr, sthr, part_f, part_i, counters if counters is not None else dummy_i, chunk_vals,
        tokens, lp_cal, lp_pol, entropy,
        vocab, vocab_offset, chunk_lo, chunk_hi, per_split, -(-per_split // tile),
        HAS_MEMORY=memory is not None, LAM_T=lam_t, TEMP_T=temp_t, SEED_T=seed_t, OFF_T=off_t,
        HAS_MASK=has_mask, HAS_NOISE=uniform_noise is not None, RETURN_ENTROPY=return_entropy,
        FINALIZE=finalize, COUNTER=counters is not None, BLOCK_S=_next_pow2(splits), C=tile,
        N_ROUNDS=_k.PHILOX_ROUNDS, num_warps=tile,
    )
    if partials_only:
        return part_f, part_i.to(torch.int64)
    if not finalize and counters is None:
        _k.dlc_combine_kernel[(rows,)](
            part_f, part_i, tokens, lp_cal, lp_pol, entropy, splits,
            BLOCK_S=_next_pow2(splits), RETURN_ENTROPY=return_entropy, num_warps=1 if splits <= 64 else 4,
        )
    return DLCSampleOutput(tokens, lp_cal, lp_pol, entropy if return_entropy else None)


def dlc_sample(
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
    backend: Optional[str] = None,
    check_nan: bool = True,
) -> DLCSampleOutput:
    """Sample one token per row from pi_cal = softmax((z_policy - lam * z_memory) / T) in one fused pass.

    Args:
        policy_logits, memory_logits: (B, V) bf16/fp16/fp32 logits (the last dim contiguous is fastest);
            memory_logits None is plain sampling of the policy (lam ignored).
        lam, temperature: floats or (B,) tensors; temperature <= 0 is greedy (argmax of the masked calibrated
            logits; log-probabilities then reported at T = 1).
        seed, offset: ints or (B,) int64 tensors for the counter-based RNG: equal (seed, offset) give equal
            tokens whatever the batch, split or sharding; pass offset = decode position for fresh noise per step.
        tau: None or a float in (0, 1]: only ids with z_policy >= max z_policy + log(tau) may be drawn.
        top_k: keep the k highest calibrated scores (0 = off); top_p: nucleus on the masked pi_cal (1 = off).
            Either adds a bisection pre-pass (up to 32 extra reads of the logits): not single-pass.
        vocab_offset: global id of column 0 (a tensor-parallel shard); tokens are global ids.
        return_entropy: also return the entropy of pi_cal.
        uniform_noise: (B, V) uniforms in (0, 1) to use instead of the RNG (tests).
        backend: force 'triton' or 'torch'; default Triton on CUDA tensors or under TRITON_INTERPRET=1.
        check_nan: raise ``DLCInvalidRowError`` if a row has NaN/+inf scores or no allowed token (one device
            sync); with False such rows come back as token -1 with NaN log-probabilities.
    """
    check_inputs(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p, uniform_noise)
    if resolve_backend(policy_logits, backend) == "torch":
        return dlc_sample_reference(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p,
                                    vocab_offset, return_entropy, uniform_noise, check_nan=check_nan)
    out = _launch(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p, vocab_offset,
                  return_entropy, uniform_noise, None, partials_only=False)
    if check_nan:
        raise_on_invalid_rows(out)
    return out


def dlc_partials(policy_logits: torch.Tensor, memory_logits: Optional[torch.Tensor], lam: FloatArg,
                 temperature: FloatArg, seed: IntArg, offset: IntArg, vocab_offset: int,
                 uniform_noise: Optional[torch.Tensor], policy_threshold: Optional[torch.Tensor],
                 return_entropy: bool = False, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial statistics (B, S, 8), (B, S) of a vocabulary shard in S id-ordered ranges, for ``merge_partials``.

    ``policy_threshold`` (B,): the global tau threshold max z_policy + log(tau), or None without tau.
    """
    if resolve_backend(policy_logits, backend) == "torch":
        return dlc_partials_reference(policy_logits, memory_logits, lam, temperature, seed, offset, vocab_offset,
                                      uniform_noise, policy_threshold)
    # The threshold kernel turns a given max into max + log(tau); hand it the threshold with log(tau) = 0.
    tau = None if policy_threshold is None else 1.0
    policy_max = None if policy_threshold is None else policy_threshold.to(torch.float32).contiguous()
    return _launch(policy_logits, memory_logits, lam, temperature, seed, offset, tau, 0, 1.0, vocab_offset,
                   return_entropy, uniform_noise, policy_max, partials_only=True)
