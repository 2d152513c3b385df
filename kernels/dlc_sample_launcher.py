"""Rollout stage, token sampling: the launcher of the fused DLC sampling kernel (``dlc_sample``).

Picks the backend (Triton on CUDA tensors or under TRITON_INTERPRET=1, the float32 reference otherwise),
the split-vocabulary grid (small batches spread each row over many programs so the whole GPU streams the
logits; large batches use one program per row and finish in the same launch) and the tile size, then runs:

    [dlc_threshold_kernel]   only with tau / top-k / top-p
    dlc_stage1_kernel        one pass over policy + memory logits (the last program of a split row merges it)
    [dlc_combine_kernel]     only for a split row launched without an arrival counter (see _arrival_counters)

Memory use: (B, S, 8) float32 + (B, S) int32 partials for the split launch and one float32 per (row, chunk of
1024 ids) for the first sampling level, nothing of size V. All of it and the outputs are one float32 buffer per call
(one allocation); the outputs are pieces of it, so a kept output keeps that call's scratch alive too (about 4 bytes
per 1024 ids per row, e.g. 600 B a row at V = 151936).

Host time: an eager decode step repeats one class of call (shapes, dtypes, which arguments are tensors). The first
call of a class is checked in full and planned (``_stage1_plan``); later ones find it under ``_call_key`` and only
check the values of scalar lam / temperature.
"""

from __future__ import annotations

import itertools
import math
import os
from functools import lru_cache
from typing import NamedTuple, Optional

import torch

from . import dlc_sample_kernel as _k
from .dlc_launch_rule import LaunchPlan, launch_plan
from .launch_cache import CachedKernel, _env_is, specialization_class
from .dlc_sample_args import (DLCSampleOutput, FloatArg, IntArg, _check_float_arg, check_inputs,
                              raise_on_invalid_rows)
from .dlc_sample_reference import dlc_partials_reference, dlc_sample_reference

# Split heuristic (tuned on an H100 with tools/bench_kernels.py --sweep, see BENCHMARKS.md): aim for
# PROGRAMS_PER_SM programs per SM, at least MIN_CHUNKS_PER_SPLIT chunks of 1024 ids each (thinner splits cost
# more in the per-split second sampling level and the combine than they gain), and tiles of up to
# MAX_TILE_CHUNKS chunks per loop iteration (LARGE_BATCH_TILE_CHUNKS once rows alone fill the GPU 4 times).
PROGRAMS_PER_SM = 3
MIN_CHUNKS_PER_SPLIT = 2
MAX_TILE_CHUNKS = 4
LARGE_BATCH_TILE_CHUNKS = 2
WARPS_PER_CHUNK = 1
# Which stage-1 tail runs: "lean" (dlc_sample_tail.py: no barrier in the loop, fewer cross-warp reductions after it,
# the same tokens) or "plain" (the kernel before it, kept for side-by-side runs: tools/bench_kernels.py --variants).
VARIANTS = ("lean", "plain")
VARIANT = os.environ.get("MEGATRON_RLVR_DLC_VARIANT", "lean")
INTERPRETER_ONE_TILE = True  # under TRITON_INTERPRET=1; tests turn it off to run the loop over several tiles


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _interpret() -> bool:
    return _env_is(b"TRITON_INTERPRET", b"1", b"0")


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


def _settings() -> tuple:
    """The launch-rule constants (module globals, so that tests and the benchmark's sweep can change them)."""
    return (PROGRAMS_PER_SM, MIN_CHUNKS_PER_SPLIT, MAX_TILE_CHUNKS, LARGE_BATCH_TILE_CHUNKS, WARPS_PER_CHUNK)


def _lean() -> bool:
    """True for the lean stage-1 tail (``VARIANT``); an unknown variant is an error naming the choices."""
    if VARIANT not in VARIANTS:
        raise ValueError(f"dlc_sample variant {VARIANT!r} unknown (MEGATRON_RLVR_DLC_VARIANT or "
                         f"dlc_sample_launcher.VARIANT); use one of {VARIANTS}")
    return VARIANT == "lean"


def _race_block(plan: LaunchPlan) -> int:
    """Chunks per step of the first-level race after the loop. Lean: all of a split's chunks in one step; the plain
    tail steps through them a tile's thread-rows at a time (at B >= 512: 3 dependent steps, each a Philox and a
    cross-warp reduction)."""
    block = 32 * plan.tile
    return max(block, _next_pow2(plan.per_split)) if _lean() else block


def _split_plan(rows: int, vocab: int, vocab_offset: int, device: torch.device) -> LaunchPlan:
    """The launch shape (chunk_lo, chunk_hi, splits, chunks_per_split, tile_chunks, num_warps) of a call."""
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 1
    plan = launch_plan(rows, vocab, vocab_offset, sms, *_settings())
    if _interpret() and INTERPRETER_ONE_TILE:  # the interpreter pays per operation, not per element: one big tile
        plan = plan._replace(tile=_next_pow2(plan.per_split))
    return plan


_COUNTERS: dict = {}
_DUMMIES: dict = {}
_PLANS: dict = {}  # _call_key(...) -> _Stage1: everything about one class of calls
_IDS = itertools.count(1)  # _Stage1.ident, the compiled handles' key: never reused, even after clear_launch_caches
STAGE1 = CachedKernel(_k.dlc_stage1_kernel)
THRESHOLD = CachedKernel(_k.dlc_threshold_kernel)
COMBINE = CachedKernel(_k.dlc_combine_kernel)
_INF = math.inf
# torch.cuda.current_device() without its Python-level lazy-init check (the C function initialises CUDA itself);
# only called for CUDA tensors, so CUDA is up by then.
_current_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device


def clear_launch_caches() -> None:
    """Forget cached launch plans and compiled handles (after changing the launch-rule constants)."""
    _PLANS.clear()
    for kernel in (STAGE1, THRESHOLD, COMBINE):
        kernel.clear()


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


def _dummies(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Placeholder float32 / int64 tensors for pointer arguments the kernel never reads (one pair per device), and
    their addresses (they live as long as the process)."""
    four = _DUMMIES.get(device)
    if four is None:
        pair = (torch.empty(1, dtype=torch.float32, device=device), torch.empty(1, dtype=torch.int64, device=device))
        four = (*pair, pair[0].data_ptr(), pair[1].data_ptr())
        _DUMMIES[device] = four
    return four


def _call_key(policy: torch.Tensor, memory, lam, temperature, seed, offset, tau, top_k, top_p, vocab_offset,
              return_entropy, uniform_noise, policy_max, partials_only: bool) -> Optional[tuple]:
    """The class of a call: every property of the arguments that ``check_inputs`` or the launch plan reads, except
    the values of scalar lam / temperature (dlc_sample checks them per call) and of scalar seed / offset (plain kernel
    arguments; any int is valid), plus the launch-rule settings (module globals tests and the sweep change). Two
    calls of one class get the same plan, layout and compiled kernels. None if an optional logits tensor is not a
    tensor (such a call is never cached; check_inputs names the argument)."""
    tensor = torch.Tensor
    if memory is None:
        m = None
    elif isinstance(memory, tensor):
        m = (memory.shape, memory.stride(), memory.dtype, memory.device)
    else:
        return None
    if uniform_noise is None:
        n = None
    elif isinstance(uniform_noise, tensor):
        n = (uniform_noise.shape, uniform_noise.stride(), uniform_noise.dtype, uniform_noise.device)
    else:
        return None
    # Per-row arguments: a tensor's shape, strides, dtype and device, else the scalar's type (inline: every call).
    return (policy.shape, policy.stride(), policy.dtype, policy.device, m, n,
            (lam.shape, lam.stride(), lam.dtype, lam.device) if isinstance(lam, tensor) else type(lam),
            (temperature.shape, temperature.stride(), temperature.dtype, temperature.device)
            if isinstance(temperature, tensor) else type(temperature),
            (seed.shape, seed.stride(), seed.dtype, seed.device) if isinstance(seed, tensor) else type(seed),
            (offset.shape, offset.stride(), offset.dtype, offset.device)
            if isinstance(offset, tensor) else type(offset),
            tau, type(tau), top_k, type(top_k), top_p, type(top_p), vocab_offset, return_entropy,
            policy_max is not None, partials_only, PROGRAMS_PER_SM, MIN_CHUNKS_PER_SPLIT, MAX_TILE_CHUNKS,
            LARGE_BATCH_TILE_CHUNKS, WARPS_PER_CHUNK, INTERPRETER_ONE_TILE, _k.PHILOX_ROUNDS, VARIANT)


def _row_mode(value, dtype: torch.dtype, device: torch.device) -> int:
    """How a per-row argument reaches the kernel: 0 a scalar argument, 1 the tensor's own data, 2 a contiguous (B,)
    copy of ``dtype`` on ``device`` made per call."""
    if not isinstance(value, torch.Tensor):
        return 0
    if value.dtype is not dtype or value.dim() != 1 or not value.is_contiguous() or value.device != device:
        return 2
    return 1


def _as_row(value: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return value.reshape(-1).to(device=device, dtype=dtype).contiguous()


def _int_halves(value: int) -> tuple[int, int]:
    """A Python int as two int32 kernel arguments carrying the low and high uint32 words."""
    if 0 <= value < (1 << 31):  # the common case (decode positions, small seeds), without the general arithmetic
        return value, 0
    value &= (1 << 64) - 1
    lo, hi = value & 0xFFFFFFFF, value >> 32
    return tuple(w - (1 << 32) if w >= (1 << 31) else w for w in (lo, hi))


def _unit_stride(policy: torch.Tensor, memory: Optional[torch.Tensor], noise: Optional[torch.Tensor]) -> tuple:
    """Inputs whose last dimension is not contiguous, copied (the kernel reads unit-stride rows), and row strides."""
    tensors = []
    for t in (policy, memory, noise):
        if t is not None and t.stride(1) != 1:
            t = t.contiguous()
        tensors.append(t)
    s_pol = tensors[0].stride(0)
    strides = tuple(s_pol if t is None else t.stride(0) for t in tensors)
    return (*tensors, strides)


class _Threshold(NamedTuple):
    """The mask pre-pass of one class of calls (tau, top_k, top_p are part of the call key)."""

    constexprs: dict
    tail: tuple  # vocab, log(tau), top_k, top_p and the constexprs: the fast launch's arguments after the pointers
    key_tail: tuple  # threshold_handle_key's parts after the stage-1 handle key


class _Stage1(NamedTuple):
    """Everything about a call that depends only on its class (_call_key): plan, buffer layout, kernel arguments."""

    ident: int  # the compiled handles' key (with the current device and whether an arrival counter is used)
    plan: LaunchPlan
    grid: tuple
    finalize: bool
    partials_only: bool
    counter: bool  # a split launch that merges in its last program: asks for an arrival-counter buffer
    rows: int
    device: torch.device
    cuda: bool
    strides: Optional[tuple]  # row strides of policy, memory, noise; None: an input is copied per call (_unit_stride)
    modes: tuple  # _row_mode of lam, temperature, seed, offset
    return_entropy: bool
    n_float: int  # float32 elements of the call's one buffer
    split: tuple  # its split into lp_cal, lp_pol, [entropy], the scratch (and padding), the tokens (B int64)
    offsets: tuple  # element offsets of lp_cal, lp_pol, entropy, pthr, sthr, part_f, part_i, chunk_vals (-1: none)
    byte_offsets: tuple  # of pthr, sthr, part_f, part_i, chunk_vals, tokens, lp_pol, entropy; 0 where absent (the
    # kernel never reads those, and the buffer's own aligned start specialises like the JIT path's aligned placeholder)
    dummies: tuple  # (float32 placeholder, int64 placeholder, their addresses) on the call's device
    ints: tuple  # V, vocab_offset, chunk_lo, chunk_hi, chunks_per_split, n_iter
    constexprs: dict  # with COUNTER=False; COUNTER depends on whether the call got an arrival buffer
    constexprs_counter: dict  # the same with COUNTER=True
    tails: tuple  # (ints + constexpr values) without and with COUNTER: the fast launch's last arguments
    threshold: Optional[_Threshold]


def _stage1_plan(key: Optional[tuple], policy: torch.Tensor, memory: Optional[torch.Tensor], lam, temperature, seed,
                 offset, tau: Optional[float], top_k: int, top_p: float, vocab_offset: int, return_entropy: bool,
                 uniform_noise: Optional[torch.Tensor], policy_max: Optional[torch.Tensor],
                 partials_only: bool) -> _Stage1:
    """The _Stage1 of a call's class, kept under ``key`` (None: not kept)."""
    rows, vocab = policy.shape
    device = policy.device
    plan = _split_plan(rows, vocab, vocab_offset, device)
    splits, per_split = plan.splits, plan.per_split
    finalize = splits == 1 and not partials_only
    has_memory, has_noise, return_entropy = memory is not None, uniform_noise is not None, bool(return_entropy)
    has_mask = tau is not None or top_k > 0 or top_p < 1.0
    modes = (_row_mode(lam, torch.float32, device), _row_mode(temperature, torch.float32, device),
             _row_mode(seed, torch.int64, device), _row_mode(offset, torch.int64, device))
    lam_t, temp_t, seed_t, off_t = (mode > 0 for mode in modes)
    unit = all(t is None or t.stride(1) == 1 for t in (policy, memory, uniform_noise))
    strides = _unit_stride(policy, memory, uniform_noise)[3] if unit else None
    # One float32 buffer per call, in rows of B: log-probs (and entropy) first, which the call returns as views,
    # then the scratch that lives only for the launch, then from the next 16-byte boundary the B int64 tokens (a view
    # too). The floats keep the offsets of the two-buffer layout before it, so the kernel sees the same alignments.
    sizes = [1, 1, int(return_entropy), int(has_mask), int(has_mask), 0 if finalize else 8 * splits,
             0 if finalize else splits, 0 if has_noise else splits * per_split]
    offsets, at = [], 0
    for size in sizes:
        offsets.append(at * rows if size else -1)
        at += size
    tok = (at * rows + 3) // 4 * 4
    n_out = 2 + int(return_entropy)
    split = (rows,) * n_out + (tok - n_out * rows, 2 * rows)
    constexprs = dict(HAS_MEMORY=has_memory, LAM_T=lam_t, TEMP_T=temp_t, SEED_T=seed_t, OFF_T=off_t,
                      HAS_MASK=has_mask, HAS_NOISE=has_noise, RETURN_ENTROPY=return_entropy, FINALIZE=finalize,
                      COUNTER=False, BLOCK_S=_next_pow2(splits), C=plan.tile, N_ROUNDS=_k.PHILOX_ROUNDS,
                      LEAN=_lean(), RACE_BLOCK=_race_block(plan))
    constexprs_counter = {**constexprs, "COUNTER": True}
    ints = (vocab, vocab_offset, plan.chunk_lo, plan.chunk_hi, per_split, -(-per_split // plan.tile))
    byte_offsets = tuple(4 * offsets[i] if offsets[i] >= 0 else 0 for i in (3, 4, 5, 6, 7)) + (
        4 * tok, 4 * rows, 4 * offsets[2] if return_entropy else 0)
    threshold = None
    if has_mask:
        thr = threshold_constexprs(has_memory, lam_t, temp_t, tau, top_k, top_p, policy_max is not None,
                                   min(_next_pow2(vocab), 8192 if _interpret() else 4096))
        log_tau = math.log(tau) if tau is not None else 0.0
        threshold = _Threshold(thr, (vocab, log_tau, top_k, float(top_p), *thr.values()),
                               threshold_handle_key(None, top_k, thr)[1:])
    stage1 = _Stage1(next(_IDS), plan, (rows, splits, 1), finalize, partials_only, not finalize and not partials_only,
                     rows, device, device.type == "cuda", strides, modes, return_entropy, tok + 2 * rows, split,
                     tuple(offsets), byte_offsets, _dummies(device), ints, constexprs, constexprs_counter,
                     (ints + tuple(constexprs.values()), ints + tuple(constexprs_counter.values())), threshold)
    if key is not None:
        _PLANS[key] = stage1
    return stage1


def _launch(policy: torch.Tensor, memory: Optional[torch.Tensor], lam: FloatArg, temperature: FloatArg,
            seed: IntArg, offset: IntArg, tau: Optional[float], top_k: int, top_p: float, vocab_offset: int,
            return_entropy: bool, uniform_noise: Optional[torch.Tensor], policy_max: Optional[torch.Tensor],
            partials_only: bool, key: Optional[tuple] = None):
    """Launch one call (checked arguments); ``key``: its _call_key if the caller has it already."""
    if key is None:
        key = _call_key(policy, memory, lam, temperature, seed, offset, tau, top_k, top_p, vocab_offset,
                        return_entropy, uniform_noise, policy_max, partials_only)
    st = _PLANS.get(key) if key is not None else None
    if st is None:
        st = _stage1_plan(key, policy, memory, lam, temperature, seed, offset, tau, top_k, top_p, vocab_offset,
                          return_entropy, uniform_noise, policy_max, partials_only)
    return _run(st, policy, memory, lam, temperature, seed, offset, uniform_noise, policy_max)


def _run(st: _Stage1, policy: torch.Tensor, memory: Optional[torch.Tensor], lam: FloatArg, temperature: FloatArg,
         seed: IntArg, offset: IntArg, uniform_noise: Optional[torch.Tensor], policy_max: Optional[torch.Tensor]):
    # The hot path of every eager decode step: what differs between calls of one class (addresses, scalars, the
    # output buffer); everything else was worked out once in _stage1_plan (see launch_cache.py for why the kernel
    # launch itself bypasses the JIT).
    rows, device = st.rows, st.device
    strides = st.strides
    if strides is None:
        policy, memory, uniform_noise, strides = _unit_stride(policy, memory, uniform_noise)
    s_pol, s_mem, s_noise = strides
    mem = memory if memory is not None else policy
    noise = uniform_noise if uniform_noise is not None else policy
    lam_m, temp_m, seed_m, off_m = st.modes
    lam_p = temp_p = seed_p = off_p = None
    a_lam = a_temp = a_seed = a_off = seed_lo = seed_hi = off_lo = off_hi = 0
    lam_v = temp_v = 0.0
    if lam_m:
        lam_p = lam if lam_m == 1 else _as_row(lam, torch.float32, device)
        a_lam = lam_p.data_ptr()
    else:
        lam_v = float(lam)
    if temp_m:
        temp_p = temperature if temp_m == 1 else _as_row(temperature, torch.float32, device)
        a_temp = temp_p.data_ptr()
    else:
        temp_v = float(temperature)
    if seed_m:
        seed_p = seed if seed_m == 1 else _as_row(seed, torch.int64, device)
        a_seed = seed_p.data_ptr()
    else:
        seed_lo, seed_hi = (seed, 0) if 0 <= seed < 2147483648 else _int_halves(seed)
    if off_m:
        off_p = offset if off_m == 1 else _as_row(offset, torch.int64, device)
        a_off = off_p.data_ptr()
    else:
        off_lo, off_hi = (offset, 0) if 0 <= offset < 2147483648 else _int_halves(offset)
    # One allocation per call; the outputs are its pieces (fresh memory each call: callers keep them). The unsafe
    # split skips autograd's view tracking (~0.1 us a piece): the pieces never require grad and do not overlap.
    buf = torch.empty(st.n_float, dtype=torch.float32, device=device)
    parts = buf.unsafe_split_with_sizes(st.split)
    tokens = parts[-1].view(torch.int64)
    base = buf.data_ptr()
    dummy_f, dummy_i, df, di = st.dummies

    # The fast path hands the launcher addresses as ints. The buffer comes from PyTorch's allocator (aligned) and
    # every offset in it is fixed by the class, so one check covers the user's tensors: a misaligned view (Triton
    # would specialise on it) always takes the JIT path.
    a_pol, a_mem, a_noise = policy.data_ptr(), mem.data_ptr(), noise.data_ptr()
    a_pmax = policy_max.data_ptr() if policy_max is not None else 0
    aligned = not ((a_pol | a_mem | a_noise | a_lam | a_temp | a_seed | a_off | a_pmax | base) & 15)
    counters = _arrival_counters(rows, device) if st.counter else None
    current = _current_device() if st.cuda else -1  # Triton loads kernels per device
    handle_key = (st.ident, current, counters is not None) if aligned else None
    if st.threshold is not None:
        _threshold(st, handle_key, current, policy, mem, s_pol, s_mem, lam_p, lam_v, temp_p, temp_v, buf,
                   (a_pol, a_mem, a_lam, a_temp, a_pmax, base), policy_max)

    h = STAGE1.handle(handle_key) if handle_key is not None else None
    if h is not None:
        b_pthr, b_sthr, b_pf, b_pi, b_cv, b_tok, b_lpp, b_ent = st.byte_offsets
        h = STAGE1.launch(h, st.grid, (
            a_pol, a_mem, a_noise, s_pol, s_mem, s_noise, a_lam or df, lam_v, a_temp or df, temp_v,
            a_seed or di, seed_lo, seed_hi, a_off or di, off_lo, off_hi, base + b_pthr, base + b_sthr, base + b_pf,
            base + b_pi, counters.data_ptr() if counters is not None else di, base + b_cv,
            base + b_tok, base, base + b_lpp, base + b_ent) + st.tails[counters is not None], current)
    if h and (st.finalize or counters is not None):  # the common eager call: launched and merged, nothing left
        return DLCSampleOutput(tokens, parts[0], parts[1], parts[2] if st.return_entropy else None)
    splits = st.plan.splits
    o_pthr, o_sthr, o_pf, o_pi, o_cv = st.offsets[3:]
    if not h:
        # Absent scratch rows get the buffer's start, as on the fast path (never read; aligned like a placeholder).
        view = lambda o, n=rows: buf.narrow(0, o, n) if o >= 0 else buf  # noqa: E731
        part_i = buf.narrow(0, o_pi, rows * splits).view(torch.int32) if o_pi >= 0 else buf
        args = (policy, mem, noise, s_pol, s_mem, s_noise,
                dummy_f if lam_p is None else lam_p, lam_v, dummy_f if temp_p is None else temp_p, temp_v,
                dummy_i if seed_p is None else seed_p, seed_lo, seed_hi, dummy_i if off_p is None else off_p,
                off_lo, off_hi, view(o_pthr), view(o_sthr), view(o_pf, rows * splits * 8), part_i,
                counters if counters is not None else dummy_i, view(o_cv, rows * splits * st.plan.per_split),
                tokens, parts[0], parts[1], parts[2] if st.return_entropy else buf, *st.ints)
        STAGE1.launch_jit(handle_key, st.grid, args, st.constexprs if counters is None else st.constexprs_counter,
                          st.plan.num_warps)
    if st.partials_only:
        part_f = buf.narrow(0, o_pf, rows * splits * 8).view(rows, splits, 8)
        part_i = buf.narrow(0, o_pi, rows * splits).view(torch.int32).view(rows, splits)
        return part_f, part_i.to(torch.int64)
    entropy = parts[2] if st.return_entropy else None
    if not st.finalize and counters is None:
        COMBINE.launch_jit(None, (rows, 1, 1), (
            buf.narrow(0, o_pf, rows * splits * 8), buf.narrow(0, o_pi, rows * splits).view(torch.int32),
            tokens, parts[0], parts[1], entropy if entropy is not None else dummy_f, splits),
            dict(BLOCK_S=_next_pow2(splits), RETURN_ENTROPY=st.return_entropy), 1 if splits <= 64 else 4)
    return DLCSampleOutput(tokens, parts[0], parts[1], entropy)


def threshold_constexprs(has_memory: bool, lam_t: bool, temp_t: bool, tau: Optional[float], top_k: int, top_p: float,
                         pmax_given: bool, block: int) -> dict:
    """The threshold kernel's constexprs, in its signature order."""
    return dict(HAS_MEMORY=has_memory, LAM_T=lam_t, TEMP_T=temp_t, HAS_TAU=tau is not None, PMAX_GIVEN=pmax_given,
                HAS_TOPK=top_k > 0, HAS_TOPP=top_p < 1.0, BLOCK=block)


def threshold_handle_key(handle_key: Optional[tuple], top_k: int, constexprs: dict) -> tuple:
    """The threshold kernel's cached-handle key: the stage-1 key (shapes, dtypes, strides, alignment), the class
    Triton specialises ``top_k`` on (1, divisible by 16), and every constexpr of the call. The stage-1 key knows only
    that *some* mask is on; which one (tau, top-k, top-p, a given policy max) compiles a different kernel, and a key
    without them replayed a top-k-only kernel for a top-k + top-p call (top-p silently ignored)."""
    return (handle_key, specialization_class(top_k), tuple(constexprs.items()))


def _threshold(st: _Stage1, handle_key: Optional[tuple], current: int, policy, mem, s_pol: int, s_mem: int, lam_p,
               lam_v, temp_p, temp_v, buf, addr: tuple, policy_max) -> None:
    """The mask pre-pass (tau / top-k / top-p): per-row thresholds into the call buffer's pthr / sthr rows."""
    thr = st.threshold
    rows = st.rows
    key = None if handle_key is None else (handle_key, *thr.key_tail)  # == threshold_handle_key(handle_key, ...)
    h = THRESHOLD.handle(key) if key is not None else None
    if h is not None:
        a_pol, a_mem, a_lam, a_temp, a_pmax, base = addr
        df = st.dummies[2]
        h = THRESHOLD.launch(h, (rows, 1, 1), (
            a_pol, a_mem, s_pol, s_mem, a_lam or df, lam_v, a_temp or df, temp_v, base + st.byte_offsets[0],
            base + st.byte_offsets[1], a_pmax or df) + thr.tail, current)
    if not h:
        dummy_f = st.dummies[0]
        vocab, log_tau, top_k, top_p = thr.tail[:4]
        THRESHOLD.launch_jit(key, (rows, 1, 1), (
            policy, mem, s_pol, s_mem, dummy_f if lam_p is None else lam_p, lam_v,
            dummy_f if temp_p is None else temp_p, temp_v, buf.narrow(0, st.offsets[3], rows),
            buf.narrow(0, st.offsets[4], rows), policy_max if policy_max is not None else dummy_f, vocab, log_tau,
            top_k, top_p), thr.constexprs, 8)


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
    key = None
    if backend is None and isinstance(policy_logits, torch.Tensor):
        # An eager decode step repeats one class of call: a class that passed check_inputs before is valid again,
        # except for the values of scalar lam / temperature (every other property check_inputs reads is in the key).
        key = _call_key(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p, vocab_offset,
                        return_entropy, uniform_noise, None, False)
        try:
            st = _PLANS.get(key)
        except TypeError:  # an unhashable argument (check_inputs below names it)
            st = key = None
        # (a CUDA class is always Triton's; a CPU one only while TRITON_INTERPRET=1, which may have changed)
        if st is not None and (st.cuda or resolve_backend(policy_logits, None) == "triton"):
            modes = st.modes
            if not modes[0] and not (type(lam) is float and 0.0 <= lam < _INF):
                _check_float_arg("lam", lam, st.rows, st.device)
            if not modes[1] and not (type(temperature) is float and 0.0 <= temperature < _INF):
                _check_float_arg("temperature", temperature, st.rows, st.device)
            out = _run(st, policy_logits, memory_logits, lam, temperature, seed, offset, uniform_noise, None)
            if check_nan:
                raise_on_invalid_rows(out)
            return out
    check_inputs(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p, uniform_noise)
    if resolve_backend(policy_logits, backend) == "torch":
        return dlc_sample_reference(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p,
                                    vocab_offset, return_entropy, uniform_noise, check_nan=check_nan)
    out = _launch(policy_logits, memory_logits, lam, temperature, seed, offset, tau, top_k, top_p, vocab_offset,
                  return_entropy, uniform_noise, None, False, key)
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
