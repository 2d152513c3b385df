"""Rollout stage, token sampling: the Triton JIT kernels of the fused DLC sampler (SPEC.md sections 2.5 and 3).

Three kernels, all reading the logits in place and never writing combined logits or probabilities:

* ``dlc_stage1_kernel``: the single streaming pass. Grid (rows, vocabulary splits). Each program walks its
  share of the vocabulary once and keeps, per thread, an online log-sum-exp of the calibrated scores, of the
  policy scores and an entropy accumulator (one rescale per 8 ids, all exponentials bare exp2 of scores kept
  in log2 units, s2 = log2(e) * s). With one split it writes the final outputs, else eight partial statistics.
* ``dlc_combine_kernel``: merges the per-split partials of a row (the split-vocabulary launch for small batches).
  Normally not launched: with a per-row arrival counter (COUNTER=True) the last program of a row to finish merges
  the row's partials itself, which saves a launch (2-3 us per decode step, 3-4% at B = 256). The counter is
  reset to 0 by that program, so a buffer zeroed once stays valid across calls and CUDA-graph replays.
* ``dlc_threshold_kernel``: only for the optional plausibility mask (tau) and top-k / top-p. It finds per row the
  policy threshold max z + log(tau) and the calibrated-score threshold of top-k / top-p by bisection over the
  order-preserving integer image of the float scores (32 passes at most; top-k/top-p are not single-pass).

Sampling is a two-level Gumbel-max, exact for pi_cal: the vocabulary is cut into chunks of CHUNK = 1024 global
ids; the pass draws one Gumbel per chunk and keeps the chunk maximising log(chunk mass) + Gumbel (so a chunk wins
with probability equal to its mass), then re-reads only the winning chunk (4 KB of bf16 logits) and draws
the token inside it by Gumbel-max with one Gumbel per id. Per-id noise for the whole vocabulary (Philox costs
about 25 integer instructions per id) made the one-id-per-Gumbel kernel compute-bound at 37% of copy bandwidth;
with noise per chunk the pass is memory-bound. Given explicit ``uniform_noise`` (tests) the kernel instead runs a
one-level exponential race on those uniforms: argmax exp(s - m) / F, F = -log2(u), which is Gumbel-max too.

Random numbers (counter-based, reproducible, independent of batch, launch shape and of tensor-parallel
sharding at chunk-aligned boundaries): Philox-4x32-10 keyed by the row's 64-bit seed, counter
(c0, offset_lo, offset_hi, c3). Chunk noise: c0 = chunk id, c3 = 1 (2 for the right part of a chunk that a
shard boundary cuts, so both parts get independent keys), first output word. Id noise: c3 = 0 and
c0 = chunk * 256 + j, whose four words serve ids chunk * 1024 + k * 256 + j, k = 0..3. A 32-bit word x becomes
u = ((x >> 9) + 0.5) * 2**-23 in (0, 1) and F = -log2(u). ``philox.py`` holds the same generator in PyTorch.
"""

import triton
import triton.language as tl

from .dlc_sample_ops import (CHUNK, PHILOX_ROUNDS, QUARTER, _better, _noise_weight, _philox4x32,  # noqa: F401
                             _quarter, _race_weight, _row_params, _row_rng_key, _scores)
from . import dlc_sample_tail as _tail


@triton.jit
def _sample_in_chunk(pol_row, mem_row, chunk, V, vocab_offset, a, b, greedy, pthr, sthr, k0, k1, c1, c2,
                     HAS_MEMORY: tl.constexpr, HAS_MASK: tl.constexpr, N_ROUNDS: tl.constexpr):
    """Second level of the sampler: Gumbel-max over the 1024 ids of the winning chunk, element noise (c3 = 0)."""
    jj = tl.arange(0, 256)
    cs = tl.maximum(chunk, 0)
    x0, x1, x2, x3 = _philox4x32((cs * 256 + jj).to(tl.uint32), c1, c2, c1 * 0, k0, k1, N_ROUNDS)
    # A row with no chunk (everything masked) reads ids past the shard end: all masked off.
    base = tl.where(chunk >= 0, cs * 1024 - vocab_offset, V) + jj
    l0 = base
    l1 = base + 256
    l2 = base + 512
    l3 = base + 768
    _, s0 = _quarter(pol_row, mem_row, l0, (l0 >= 0) & (l0 < V), a, b, pthr, sthr, HAS_MEMORY,
                     HAS_MASK)
    _, s1 = _quarter(pol_row, mem_row, l1, (l1 >= 0) & (l1 < V), a, b, pthr, sthr, HAS_MEMORY,
                     HAS_MASK)
    _, s2 = _quarter(pol_row, mem_row, l2, (l2 >= 0) & (l2 < V), a, b, pthr, sthr, HAS_MEMORY,
                     HAS_MASK)
    _, s3 = _quarter(pol_row, mem_row, l3, (l3 >= 0) & (l3 < V), a, b, pthr, sthr, HAS_MEMORY,
                     HAS_MASK)
    g0 = tl.where(greedy, s0, s0 - tl.log2(_race_weight(x0)))
    g1 = tl.where(greedy, s1, s1 - tl.log2(_race_weight(x1)))
    g2 = tl.where(greedy, s2, s2 - tl.log2(_race_weight(x2)))
    g3 = tl.where(greedy, s3, s3 - tl.log2(_race_weight(x3)))
    best, pos = tl.max(g0, 0, return_indices=True, return_indices_tie_break_left=True)
    v, i = tl.max(g1, 0, return_indices=True, return_indices_tie_break_left=True)
    best, pos = _better(best, pos, v, i + 256)
    v, i = tl.max(g2, 0, return_indices=True, return_indices_tie_break_left=True)
    best, pos = _better(best, pos, v, i + 512)
    v, i = tl.max(g3, 0, return_indices=True, return_indices_tie_break_left=True)
    best, pos = _better(best, pos, v, i + 768)
    return tl.where((chunk < 0) | (best == float("-inf")), -1, cs * 1024 + pos)


@triton.jit
def _chunk_race(chunk_row, c_begin, c_end, vocab_offset, greedy, k0, k1, c1, c2, NB: tl.constexpr,
                N_ROUNDS: tl.constexpr):
    """First level, part 2: Gumbel-max over the split's chunks, key = log2(chunk mass) + chunk noise.

    Chunk noise: Philox counter (chunk id, offset, c3), first word; c3 = 1, or 2 for the part of a chunk that a
    shard boundary cuts off on the left. Ties go to the smallest chunk id. Returns (best key, best chunk or -1).
    """
    tl.debug_barrier()  # the chunk values were stored by every warp of this program
    jj = tl.arange(0, NB)
    best_key = tl.full([], float("-inf"), tl.float32)
    best_chunk = tl.full([], -1, tl.int32)
    for start in range(0, c_end - c_begin, NB):
        cid = c_begin + start + jj
        ok = cid < c_end
        val = tl.load(chunk_row + start + jj, mask=ok, other=float("-inf"))
        c3 = tl.where(cid * 1024 < vocab_offset, 2, 1).to(tl.uint32)
        y, _, _, _ = _philox4x32(cid.to(tl.uint32), c1, c2, c3, k0, k1, N_ROUNDS)
        key = tl.where(ok, tl.where(greedy, val, val - tl.log2(_race_weight(y))), float("-inf"))
        kb = tl.max(key, 0)
        kc = tl.min(tl.where(key == kb, cid, 2147483647), 0)
        take = kb > best_key
        best_key = tl.where(take, kb, best_key)
        best_chunk = tl.where(take, kc, best_chunk)
    return best_key, best_chunk


@triton.jit
def _finish_row(row, M, L, T, MP, LP, best_score, s2b, p2b, tok, tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr,
                RETURN_ENTROPY: tl.constexpr):
    """Final outputs of one row from its merged statistics; non-finite or empty rows get token -1 and NaNs."""
    lse2 = M + tl.log2(L)
    lse2p = MP + tl.log2(LP)
    lp_cal = (s2b - lse2) * 0.6931471805599453
    lp_pol = (p2b - lse2p) * 0.6931471805599453
    bad = (L != L) | (LP != LP) | (L <= 0.0) | (tok < 0) | (lp_cal != lp_cal) | (lp_pol != lp_pol)
    bad = bad | (best_score != best_score) | (L == float("inf")) | (LP == float("inf"))
    tl.store(tok_ptr + row, tl.where(bad, -1, tok).to(tl.int64))
    tl.store(lp_cal_ptr + row, tl.where(bad, float("nan"), lp_cal))
    tl.store(lp_pol_ptr + row, tl.where(bad, float("nan"), lp_pol))
    if RETURN_ENTROPY:
        ent = (tl.log2(L) - T / L) * 0.6931471805599453
        tl.store(ent_ptr + row, tl.where(bad, float("nan"), ent))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi", "lam_val", "temp_val"])
def dlc_stage1_kernel(
    pol_ptr, mem_ptr, noise_ptr, stride_pol, stride_mem, stride_noise,
    lam_ptr, lam_val, temp_ptr, temp_val,
    seed_ptr, seed_lo, seed_hi, off_ptr, off_lo, off_hi,
    pthr_ptr, sthr_ptr,
    part_f_ptr, part_i_ptr, cnt_ptr, chunk_ptr,
    tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr,
    V, vocab_offset, chunk_lo, chunk_hi, chunks_per_split, n_iter,
    HAS_MEMORY: tl.constexpr, LAM_T: tl.constexpr, TEMP_T: tl.constexpr, SEED_T: tl.constexpr,
    OFF_T: tl.constexpr, HAS_MASK: tl.constexpr, HAS_NOISE: tl.constexpr, RETURN_ENTROPY: tl.constexpr,
    FINALIZE: tl.constexpr, COUNTER: tl.constexpr, BLOCK_S: tl.constexpr, C: tl.constexpr,
    N_ROUNDS: tl.constexpr, LEAN: tl.constexpr = False, RACE_BLOCK: tl.constexpr = 0,
):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_split = tl.num_programs(1)
    row = pid_b.to(tl.int64)
    pol_row = pol_ptr + row * stride_pol
    mem_row = mem_ptr + row * stride_mem
    noise_row = noise_ptr + row * stride_noise

    a, b, greedy = _row_params(row, lam_ptr, lam_val, temp_ptr, temp_val, LAM_T, TEMP_T)
    k0, k1, c1, c2 = _row_rng_key(row, seed_ptr, seed_lo, seed_hi, off_ptr, off_lo, off_hi, SEED_T, OFF_T)
    if HAS_MASK:
        pthr = tl.load(pthr_ptr + row)
        sthr = tl.load(sthr_ptr + row)
    else:
        pthr = float("-inf")
        sthr = float("-inf")
    # Policy statistics equal the calibrated ones when nothing is subtracted or masked: skip them.
    SEPARATE_POLICY: tl.constexpr = HAS_MEMORY or HAS_MASK

    R: tl.constexpr = C * 32
    rr = tl.arange(0, R)[:, None]  # (R, 1): one thread-row of 8 ids per quarter
    ii = tl.arange(0, 8)[None, :]  # (1, 8)
    tile = (rr // 32) * 1024 + (rr % 32) * 8 + ii  # (R, 8) ids of quarter 0 relative to the group start
    row_base = (rr // 32) * 1024 + (rr % 32) * 8  # (R, 1)

    m_c = tl.full([R], float("-inf"), tl.float32)
    l_c = tl.zeros([R], tl.float32)
    t_c = tl.zeros([R], tl.float32)
    m_p = tl.full([R], float("-inf"), tl.float32)
    l_p = tl.zeros([R], tl.float32)
    best = tl.full([R], float("-inf"), tl.float32)
    best_i = tl.full([R], -1, tl.int32)

    c_begin = chunk_lo + pid_s * chunks_per_split
    c_end = tl.minimum(c_begin + chunks_per_split, chunk_hi)
    # RNG mode: the pass stores each chunk's log2 mass (its max score for greedy rows) here; the chunk noise and
    # the first-level race run once after the loop, one chunk per thread, instead of once per warp per tile.
    chunk_row = chunk_ptr + (row * n_split + pid_s) * chunks_per_split
    for it in range(n_iter):
        cg = c_begin + it * C
        g0 = cg * 1024  # global id of this group's first element
        local = g0 - vocab_offset + tile  # (R, 8) shard-local ids of quarter 0
        live = (cg + rr // 32) < c_end
        l0 = local
        l1 = local + 256
        l2 = local + 512
        l3 = local + 768
        i0 = live & (l0 >= 0) & (l0 < V)
        i1 = live & (l1 >= 0) & (l1 < V)
        i2 = live & (l2 >= 0) & (l2 < V)
        i3 = live & (l3 >= 0) & (l3 < V)
        p0, s0 = _quarter(pol_row, mem_row, l0, i0, a, b, pthr, sthr, HAS_MEMORY, HAS_MASK)
        p1, s1 = _quarter(pol_row, mem_row, l1, i1, a, b, pthr, sthr, HAS_MEMORY, HAS_MASK)
        p2_, s2_ = _quarter(pol_row, mem_row, l2, i2, a, b, pthr, sthr, HAS_MEMORY, HAS_MASK)
        p3, s3 = _quarter(pol_row, mem_row, l3, i3, a, b, pthr, sthr, HAS_MEMORY, HAS_MASK)

        # One rescale per thread-row per group, not per element.
        mx = tl.maximum(tl.maximum(tl.max(s0, 1), tl.max(s1, 1)), tl.maximum(tl.max(s2_, 1), tl.max(s3, 1)))
        m_new = tl.maximum(m_c, mx)
        ms = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_c - ms)
        d0 = s0 - ms[:, None]
        d1 = s1 - ms[:, None]
        d2 = s2_ - ms[:, None]
        d3 = s3 - ms[:, None]
        e0 = tl.exp2(d0)
        e1 = tl.exp2(d1)
        e2 = tl.exp2(d2)
        e3 = tl.exp2(d3)
        if RETURN_ENTROPY:
            # t = sum e * (s2 - m) relative to the running max, rescaled like l. Masked ids have e = 0 and
            # d = -inf; clamping d (where e = 0 anyway: exp2 underflows below -149) keeps 0 * d finite in
            # two instructions per id instead of a compare-and-select around the product.
            t_old = t_c + tl.where(l_c > 0.0, (m_c - ms) * l_c, 0.0)
            t_add = (tl.sum(e0 * tl.maximum(d0, -256.0), 1) + tl.sum(e1 * tl.maximum(d1, -256.0), 1)) + (
                tl.sum(e2 * tl.maximum(d2, -256.0), 1) + tl.sum(e3 * tl.maximum(d3, -256.0), 1))
            t_c = alpha * t_old + t_add
        rs = (tl.sum(e0, 1) + tl.sum(e1, 1)) + (tl.sum(e2, 1) + tl.sum(e3, 1))  # (R,) this group's mass
        l_c = l_c * alpha + rs
        m_c = m_new

        if HAS_NOISE:
            # Exponential race on caller-given uniforms: the largest e / F wins.
            q, i = tl.max(e0 / _noise_weight(noise_row, l0, i0, greedy), 1, return_indices=True,
                          return_indices_tie_break_left=True)
            pos = i
            qn, i = tl.max(e1 / _noise_weight(noise_row, l1, i1, greedy), 1, return_indices=True,
                           return_indices_tie_break_left=True)
            q, pos = _better(q, pos, qn, i + 256)
            qn, i = tl.max(e2 / _noise_weight(noise_row, l2, i2, greedy), 1, return_indices=True,
                           return_indices_tie_break_left=True)
            q, pos = _better(q, pos, qn, i + 512)
            qn, i = tl.max(e3 / _noise_weight(noise_row, l3, i3, greedy), 1, return_indices=True,
                           return_indices_tie_break_left=True)
            q, pos = _better(q, pos, qn, i + 768)
            # Greedy rows compare the exact row maximum, so ties between groups are not decided by rounding.
            score = tl.where(greedy, mx, ms + tl.log2(q))
            take = score > best
            best = tl.where(take, score, best)
            best_i = tl.where(take, g0 + tl.sum(row_base, 1) + pos, best_i)
        else:
            # First level, part 1: the log2 mass of each chunk (greedy: its max score). Chunk mass in the frame of
            # the chunk's largest running max; rows with nothing allowed yet have m_new = -inf and add 0 (their
            # safe frame 0 must not set the reference, or masses underflow).
            mn2 = tl.reshape(m_new, (C, 32))
            ref = tl.max(mn2, 1)
            ref = tl.where(ref == float("-inf"), 0.0, ref)
            mass = tl.sum(tl.reshape(rs, (C, 32)) * tl.exp2(mn2 - ref[:, None]), 1)  # (C,)
            cid = cg + tl.arange(0, C)
            val = tl.where(greedy, tl.max(tl.reshape(mx, (C, 32)), 1), ref + tl.log2(mass))
            if LEAN:
                # Store from the thread-rows' own layout (lane 0 of each chunk's warp writes): the (C,) layout of
                # the reduction would need a shared-memory conversion and two barriers per iteration.
                rr_1 = tl.arange(0, R)  # (R,): the thread-rows, in the layout of the per-row statistics
                val_r = tl.reshape(tl.broadcast_to(val[:, None], (C, 32)), (R,))
                tl.store(chunk_row + (it * C + rr_1 // 32), val_r, mask=((rr_1 % 32) == 0) & ((cg + rr_1 // 32) < c_end))
            else:
                tl.store(chunk_row + (cid - c_begin), val, mask=cid < c_end)

        if SEPARATE_POLICY:
            mpx = tl.maximum(tl.maximum(tl.max(p0, 1), tl.max(p1, 1)), tl.maximum(tl.max(p2_, 1), tl.max(p3, 1)))
            mp_new = tl.maximum(m_p, mpx)
            mps = tl.where(mp_new == float("-inf"), 0.0, mp_new)
            pe = (tl.sum(tl.exp2(p0 - mps[:, None]), 1) + tl.sum(tl.exp2(p1 - mps[:, None]), 1)) + (
                tl.sum(tl.exp2(p2_ - mps[:, None]), 1) + tl.sum(tl.exp2(p3 - mps[:, None]), 1))
            l_p = l_p * tl.exp2(m_p - mps) + pe
            m_p = mp_new

    if not SEPARATE_POLICY:
        m_p = m_c
        l_p = l_c

    # Reduce the per-thread statistics of this program.
    if LEAN and not HAS_NOISE:
        # The chunk race, the winning chunk's loads, then the statistics (one cross-warp reduction) while those
        # loads are in flight, then the race inside the chunk; the winner's scores come with it (dlc_sample_tail.py).
        bs, best_chunk = _tail.chunk_race(chunk_row, c_begin, c_end, vocab_offset, greedy, k0, k1, c1, c2,
                                          RACE_BLOCK, N_ROUNDS)
        zp0, zm0, zp1, zm1, zp2, zm2, zp3, zm3 = _tail.load_chunk(pol_row, mem_row, best_chunk, V, vocab_offset,
                                                                  HAS_MEMORY)
        M, L, T, MP, LP = _tail.program_statistics(m_c, l_c, t_c, m_p, l_p, SEPARATE_POLICY, RETURN_ENTROPY)
        tok, s2b, p2b = _tail.race_in_chunk(zp0, zm0, zp1, zm1, zp2, zm2, zp3, zm3, best_chunk, a, b, greedy, pthr,
                                            sthr, k0, k1, c1, c2, HAS_MEMORY, HAS_MASK, N_ROUNDS)
        Ms = tl.where(M == float("-inf"), 0.0, M)
        MPs = tl.where(MP == float("-inf"), 0.0, MP)
    elif LEAN:  # explicit noise (tests): one cross-warp reduction of the statistics
        M, L, T, MP, LP = _tail.program_statistics(m_c, l_c, t_c, m_p, l_p, SEPARATE_POLICY, RETURN_ENTROPY)
        Ms = tl.where(M == float("-inf"), 0.0, M)
        MPs = tl.where(MP == float("-inf"), 0.0, MP)
    else:
        M = tl.max(m_c, 0)
        Ms = tl.where(M == float("-inf"), 0.0, M)
        w = tl.exp2(m_c - Ms)
        L = tl.sum(l_c * w, 0)
        T = tl.sum(tl.where(l_c > 0.0, w * (t_c + (m_c - Ms) * l_c), 0.0), 0)
        MP = tl.max(m_p, 0)
        MPs = tl.where(MP == float("-inf"), 0.0, MP)
        LP = tl.sum(l_p * tl.exp2(m_p - MPs), 0)
    if HAS_NOISE:
        bs = tl.max(best, 0)
        # Smallest id among equal scores, matching torch.argmax of the reference.
        tok = tl.min(tl.where(best == bs, best_i, 2147483647), 0)
        tok = tl.where(tok == 2147483647, -1, tok)
    elif not LEAN:
        bs, best_chunk = _chunk_race(chunk_row, c_begin, c_end, vocab_offset, greedy, k0, k1, c1, c2, C * 32,
                                     N_ROUNDS)
        tok = _sample_in_chunk(pol_row, mem_row, best_chunk, V, vocab_offset, a, b, greedy, pthr, sthr, k0, k1,
                               c1, c2, HAS_MEMORY, HAS_MASK, N_ROUNDS)

    if HAS_NOISE or not LEAN:
        # The winner's own scores, recomputed from its two logits.
        tl_local = tl.maximum(tok - vocab_offset, 0).to(tl.int64)
        zpb = tl.load(pol_row + tl_local).to(tl.float32)
        p2b = zpb * a
        if HAS_MEMORY:
            zmb = tl.load(mem_row + tl_local).to(tl.float32)
            s2b = tl.fma(zmb, -b, p2b)
        else:
            s2b = p2b

    if FINALIZE:
        _finish_row(row, Ms, L, T, MPs, LP, bs, s2b, p2b, tok, tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr,
                    RETURN_ENTROPY)
    else:
        base = part_f_ptr + (row * n_split + pid_s) * 8
        tl.store(base + 0, M)
        tl.store(base + 1, L)
        tl.store(base + 2, T)
        tl.store(base + 3, MP)
        tl.store(base + 4, LP)
        tl.store(base + 5, bs)
        tl.store(base + 6, s2b)
        tl.store(base + 7, p2b)
        tl.store(part_i_ptr + row * n_split + pid_s, tok)
        if COUNTER:
            # Every thread's partial stores happen before the release of the arrival (barrier, then acq_rel
            # atomic); the last program to arrive acquires them all and merges the row.
            tl.debug_barrier()
            arrived = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel", scope="gpu")
            if arrived == n_split - 1:
                tl.store(cnt_ptr + row, 0)  # ready for the next call (no other program of this row is left)
                _combine_row(row, part_f_ptr, part_i_ptr, tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr, n_split,
                             BLOCK_S, RETURN_ENTROPY)


@triton.jit
def _combine_row(row, part_f_ptr, part_i_ptr, tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr, n_split,
                 BLOCK_S: tl.constexpr, RETURN_ENTROPY: tl.constexpr):
    """Merge the per-split statistics of one row (same algebra as ``combine.merge_partials``)."""
    sp = tl.arange(0, BLOCK_S)
    ok = sp < n_split
    base = part_f_ptr + (row * n_split + sp) * 8
    # .cg: read from L2, never from this SM's L1, which may hold nothing of other programs' writes but must not.
    m = tl.load(base + 0, mask=ok, other=float("-inf"), cache_modifier=".cg")
    l = tl.load(base + 1, mask=ok, other=0.0, cache_modifier=".cg")
    t = tl.load(base + 2, mask=ok, other=0.0, cache_modifier=".cg")
    mp = tl.load(base + 3, mask=ok, other=float("-inf"), cache_modifier=".cg")
    lp = tl.load(base + 4, mask=ok, other=0.0, cache_modifier=".cg")
    bs = tl.load(base + 5, mask=ok, other=float("-inf"), cache_modifier=".cg")
    s2b = tl.load(base + 6, mask=ok, other=0.0, cache_modifier=".cg")
    p2b = tl.load(base + 7, mask=ok, other=0.0, cache_modifier=".cg")
    tok = tl.load(part_i_ptr + row * n_split + sp, mask=ok, other=-1, cache_modifier=".cg")

    M = tl.max(m, 0)
    Ms = tl.where(M == float("-inf"), 0.0, M)
    w = tl.exp2(m - Ms)
    L = tl.sum(l * w, 0)
    T = tl.sum(tl.where(l > 0.0, w * (t + (m - Ms) * l), 0.0), 0)
    MP = tl.max(mp, 0)
    MPs = tl.where(MP == float("-inf"), 0.0, MP)
    LP = tl.sum(lp * tl.exp2(mp - MPs), 0)
    B = tl.max(bs, 0)
    # Splits cover increasing ids, so the first split holding the maximum has the smallest id.
    first = tl.min(tl.where((bs == B) & ok, sp, BLOCK_S), 0)
    pick = sp == first
    tok_b = tl.sum(tl.where(pick, tok, 0), 0)
    tok_b = tl.where(first == BLOCK_S, -1, tok_b)
    s2 = tl.sum(tl.where(pick, s2b, 0.0), 0)
    p2 = tl.sum(tl.where(pick, p2b, 0.0), 0)
    _finish_row(row, Ms, L, T, MPs, LP, B, s2, p2, tok_b, tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr, RETURN_ENTROPY)


@triton.jit
def dlc_combine_kernel(part_f_ptr, part_i_ptr, tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr, n_split,
                       BLOCK_S: tl.constexpr, RETURN_ENTROPY: tl.constexpr):
    """Merge the per-split statistics of each row: one program per row (used when no arrival counter is given)."""
    _combine_row(tl.program_id(0).to(tl.int64), part_f_ptr, part_i_ptr, tok_ptr, lp_cal_ptr, lp_pol_ptr, ent_ptr,
                 n_split, BLOCK_S, RETURN_ENTROPY)


@triton.jit
def _order_key(s2):
    """Order-preserving int32 image of a float32 (for bisection over the value axis)."""
    bits = s2.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)


@triton.jit
def dlc_threshold_kernel(
    pol_ptr, mem_ptr, stride_pol, stride_mem, lam_ptr, lam_val, temp_ptr, temp_val,
    pthr_ptr, sthr_ptr, pmax_ptr, V, log_tau, top_k, top_p,
    HAS_MEMORY: tl.constexpr, LAM_T: tl.constexpr, TEMP_T: tl.constexpr, HAS_TAU: tl.constexpr,
    PMAX_GIVEN: tl.constexpr, HAS_TOPK: tl.constexpr, HAS_TOPP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per-row mask thresholds: pthr on raw policy logits (tau), sthr on calibrated scores (top-k, then top-p)."""
    row = tl.program_id(0).to(tl.int64)
    pol_row = pol_ptr + row * stride_pol
    mem_row = mem_ptr + row * stride_mem
    a, b, greedy = _row_params(row, lam_ptr, lam_val, temp_ptr, temp_val, LAM_T, TEMP_T)
    offs0 = tl.arange(0, BLOCK)

    pthr = float("-inf")
    if HAS_TAU:
        if PMAX_GIVEN:  # the global maximum of a vocabulary-parallel policy, reduced across ranks
            pmax = tl.load(pmax_ptr + row)
        else:
            pmax = float("-inf")
            for start in range(0, V, BLOCK):
                offs = start + offs0
                zp = tl.load(pol_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
                pmax = tl.maximum(pmax, tl.max(zp, 0))
        pthr = pmax + log_tau
    tl.store(pthr_ptr + row, pthr)

    sthr = float("-inf")
    if HAS_TOPK or HAS_TOPP:
        kmin = tl.full([], 2147483647, tl.int64)
        kmax = tl.full([], -2147483648, tl.int64)
        smax = float("-inf")
        n_ok = tl.full([], 0, tl.int64)
        for start in range(0, V, BLOCK):
            offs = start + offs0
            inb = offs < V
            zp, p2, s2 = _scores(pol_row, mem_row, offs, inb, a, b, HAS_MEMORY)
            ok = inb & (zp >= pthr) & (s2 == s2)
            key = _order_key(s2)
            kmin = tl.minimum(kmin, tl.min(tl.where(ok, key, 2147483647), 0))
            kmax = tl.maximum(kmax, tl.max(tl.where(ok, key, -2147483648), 0))
            smax = tl.maximum(smax, tl.max(tl.where(ok, s2, float("-inf")), 0))
            n_ok += tl.sum(ok.to(tl.int64), 0)
        lo = kmin
        hi = kmax
        if HAS_TOPK:
            # Largest key t with count(key >= t) >= k: the k-th largest score (ties all kept).
            if n_ok <= top_k:
                hi = lo
            while lo < hi:
                mid = lo + (hi - lo + 1) // 2
                cnt = tl.full([], 0, tl.int64)
                for start in range(0, V, BLOCK):
                    offs = start + offs0
                    inb = offs < V
                    zp, p2, s2 = _scores(pol_row, mem_row, offs, inb, a, b, HAS_MEMORY)
                    ok = inb & (zp >= pthr) & (_order_key(s2) >= mid)
                    cnt += tl.sum(ok.to(tl.int64), 0)
                take = cnt >= top_k
                lo = tl.where(take, mid, lo)
                hi = tl.where(take, hi, mid - 1)
            hi = kmax
        if HAS_TOPP:
            # Largest key t whose upper set holds at least top_p of the (tau, top-k)-masked probability mass.
            ms = tl.where(smax == float("-inf"), 0.0, smax)
            kthr = lo
            z = 0.0
            for start in range(0, V, BLOCK):
                offs = start + offs0
                inb = offs < V
                zp, p2, s2 = _scores(pol_row, mem_row, offs, inb, a, b, HAS_MEMORY)
                ok = inb & (zp >= pthr) & (_order_key(s2) >= kthr)
                z += tl.sum(tl.where(ok, tl.exp2(s2 - ms), 0.0), 0)
            target = top_p * z
            while lo < hi:
                mid = lo + (hi - lo + 1) // 2
                mass = 0.0
                for start in range(0, V, BLOCK):
                    offs = start + offs0
                    inb = offs < V
                    zp, p2, s2 = _scores(pol_row, mem_row, offs, inb, a, b, HAS_MEMORY)
                    ok = inb & (zp >= pthr) & (_order_key(s2) >= mid)
                    mass += tl.sum(tl.where(ok, tl.exp2(s2 - ms), 0.0), 0)
                take = mass >= target
                lo = tl.where(take, mid, lo)
                hi = tl.where(take, hi, mid - 1)
        lo32 = lo.to(tl.int32)
        bits = tl.where(lo32 < 0, lo32 ^ 0x7FFFFFFF, lo32)
        sthr = tl.where(n_ok > 0, bits.to(tl.float32, bitcast=True), float("-inf"))
    tl.store(sthr_ptr + row, sthr)
