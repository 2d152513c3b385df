"""Rollout stage, token sampling: the per-element building blocks of the fused DLC sampler's Triton kernels.

Philox-4x32 (the counter-based generator), the race divisor of a uniform, the per-row scale factors and RNG key,
and the score of one tile of ids. ``dlc_sample_kernel`` (the streaming pass) and ``dlc_sample_tail`` (what a
program does after it) both use them; the module docstring of ``dlc_sample_kernel`` describes the scheme.
"""

import triton
import triton.language as tl

CHUNK = 1024
QUARTER = 256  # a chunk's four quarters each hold 32 thread-rows of 8 contiguous ids (one 16-byte bf16 load)
PHILOX_ROUNDS = 10


_PHILOX_KEY_A = tl.constexpr(0x9E3779B9)
_PHILOX_KEY_B = tl.constexpr(0xBB67AE85)
_PHILOX_ROUND_A = tl.constexpr(0xD2511F53)
_PHILOX_ROUND_B = tl.constexpr(0xCD9E8D57)


@triton.jit
def _philox4x32(c0, c1, c2, c3, k0, k1, N_ROUNDS: tl.constexpr):
    """Philox-4x32 (Salmon et al., SC'11) on uint32 values; only c0 varies per element here."""
    for _ in tl.static_range(N_ROUNDS):
        _c0 = c0
        _c2 = c2
        c0 = tl.umulhi(_c2, _PHILOX_ROUND_B) ^ c1 ^ k0
        c2 = tl.umulhi(_c0, _PHILOX_ROUND_A) ^ c3 ^ k1
        c1 = _c2 * _PHILOX_ROUND_B
        c3 = _c0 * _PHILOX_ROUND_A
        k0 = k0 + _PHILOX_KEY_A
        k1 = k1 + _PHILOX_KEY_B
    return c0, c1, c2, c3


@triton.jit
def _race_weight(x):
    """F = -log2(u) for u = ((x >> 9) + 0.5) * 2^-23, the exponential-race divisor of one uint32."""
    u = (x >> 9).to(tl.float32) * 1.1920928955078125e-07 + 5.960464477539063e-08
    return -tl.log2(u)


@triton.jit
def _row_params(row, lam_ptr, lam_val, temp_ptr, temp_val, LAM_T: tl.constexpr, TEMP_T: tl.constexpr):
    """Per-row scale factors: s2 = z_policy * a - z_memory * b; temperature <= 0 means greedy (scored at T = 1)."""
    if LAM_T:
        lam = tl.load(lam_ptr + row).to(tl.float32)
    else:
        lam = lam_val
    if TEMP_T:
        temp = tl.load(temp_ptr + row).to(tl.float32)
    else:
        temp = temp_val
    greedy = temp <= 0.0
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.where(greedy, 1.0, temp))
    a = inv_t * 1.4426950408889634
    b = lam * a
    return a, b, greedy


@triton.jit
def _row_rng_key(row, seed_ptr, seed_lo, seed_hi, off_ptr, off_lo, off_hi, SEED_T: tl.constexpr,
                 OFF_T: tl.constexpr):
    if SEED_T:
        s = tl.load(seed_ptr + row)
        k0 = (s & 0xFFFFFFFF).to(tl.uint32)
        k1 = ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)
    else:
        k0 = seed_lo.to(tl.uint32, bitcast=True)
        k1 = seed_hi.to(tl.uint32, bitcast=True)
    if OFF_T:
        o = tl.load(off_ptr + row)
        c1 = (o & 0xFFFFFFFF).to(tl.uint32)
        c2 = ((o >> 32) & 0xFFFFFFFF).to(tl.uint32)
    else:
        c1 = off_lo.to(tl.uint32, bitcast=True)
        c2 = off_hi.to(tl.uint32, bitcast=True)
    return k0, k1, c1, c2


@triton.jit
def _load_logits(pol_row, mem_row, offs, inb, HAS_MEMORY: tl.constexpr):
    """The raw logits of some ids (policy -inf, memory 0 out of bounds; without memory the policy twice)."""
    zp = tl.load(pol_row + offs, mask=inb, other=float("-inf"))
    if HAS_MEMORY:
        zm = tl.load(mem_row + offs, mask=inb, other=0.0)
    else:
        zm = zp
    return zp, zm


@triton.jit
def _scores_of(zp_raw, zm_raw, a, b, HAS_MEMORY: tl.constexpr):
    """Raw policy logit, policy score and calibrated score (log2 units) of loaded logits."""
    zp = zp_raw.to(tl.float32)
    p2 = zp * a
    if HAS_MEMORY:
        # An explicit fma pins the rounding: the threshold kernel's top-k/top-p cut, the pass and the winner's
        # recomputed score then see bit-identical s2 (free contraction could fuse either product).
        s2 = tl.fma(zm_raw.to(tl.float32), -b, p2)
    else:
        s2 = p2
    return zp, p2, s2


@triton.jit
def _scores(pol_row, mem_row, offs, inb, a, b, HAS_MEMORY: tl.constexpr):
    """Raw policy logit, policy score and calibrated score (log2 units); out of bounds gives -inf scores."""
    zp_raw, zm_raw = _load_logits(pol_row, mem_row, offs, inb, HAS_MEMORY)
    return _scores_of(zp_raw, zm_raw, a, b, HAS_MEMORY)


@triton.jit
def _masked(zp, s2, pthr, sthr, HAS_MASK: tl.constexpr):
    """Calibrated scores with masked ids at -inf (NaN is kept: the row is flagged)."""
    if HAS_MASK:
        keep = (zp >= pthr) & (s2 >= sthr)
        s2 = tl.where(keep | (s2 != s2), s2, float("-inf"))
    return s2


@triton.jit
def _quarter(pol_row, mem_row, local, inb, a, b, pthr, sthr, HAS_MEMORY: tl.constexpr, HAS_MASK: tl.constexpr):
    """Policy and calibrated scores of one quarter tile; masked ids get s2 = -inf (NaN is kept: the row is flagged)."""
    zp, p2, s2 = _scores(pol_row, mem_row, local, inb, a, b, HAS_MEMORY)
    return p2, _masked(zp, s2, pthr, sthr, HAS_MASK)


@triton.jit
def _noise_weight(noise_row, local, inb, greedy):
    """Race divisor F = -log2(u) from caller-given uniforms (1 for greedy rows)."""
    u = tl.load(noise_row + local, mask=inb, other=0.5).to(tl.float32)
    return tl.where(greedy, 1.0, -tl.log2(u))


@triton.jit
def _better(q, pos, q_new, pos_new):
    take = q_new > q
    return tl.where(take, q_new, q), tl.where(take, pos_new, pos)
