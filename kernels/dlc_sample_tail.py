"""Rollout stage, token sampling: the lean tail of the fused DLC sampler's stage-1 program (``LEAN=True``).

What a program does after its streaming loop is a serial chain: reduce its threads' statistics, race the chunks,
re-read the winning chunk and race its ids, then (split rows) store partials and merge. At B = 256 every program
runs that chain at the same moment (one wave, equal work), so its latency is paid once per call and not hidden by
other programs' loads. In the runs of BENCHMARKS.md the fused time minus the copy-bandwidth floor is about the same
at B = 256 and B = 1024: a fixed cost per call, which weighs most at the smaller batch. In sm_90 SASS each
cross-warp reduction is a shuffle chain and three barriers.
This version needs fewer of them, with the same results:

* the program's statistics: one tuple reduction that merges (max, mass[, entropy term]) pairs of the calibrated
  and the policy scores online, instead of a max then sums for each (5-6 cross-warp reductions). The sums run in
  another order, so log-probabilities and entropy may differ in the last bits; tokens do not depend on them;
* the chunk race: one (key, chunk) reduction, ties to the smallest chunk, instead of a max then a min, over all
  of the split's chunks at once (``RACE_BLOCK``, a power of two >= chunks per split) instead of a tile's thread-rows
  at a time (at B >= 512 one program has 149 chunks: 3 steps of 64, each a dependent Philox and reduction);
* the race inside the winning chunk: the four quarters are first merged element-wise, then one
  (score, position, calibrated score, policy score) reduction finds the first maximum. It also hands back the
  winner's two scores, so the winner's logits are not loaded again;
* order: the winning chunk's loads are issued before the program's statistics are reduced (``load_chunk``, then
  ``program_statistics``, then ``race_in_chunk``), so that reduction runs while the loads are in flight instead
  of before them.

Every choice (which chunk, which id, ties to the smallest id) is the one the plain tail makes: tests compare the
tokens of both with each other and with the PyTorch reference's draws.
"""

import triton
import triton.language as tl

from .dlc_sample_ops import _load_logits, _masked, _philox4x32, _race_weight, _scores_of


@triton.jit
def _merge_lse(m1, l1, m2, l2):
    """Two (max, sum of 2^(s - max)) pairs as one; an empty pair is (-inf, 0)."""
    m = tl.maximum(m1, m2)
    ms = tl.where(m == float("-inf"), 0.0, m)
    return m, l1 * tl.exp2(m1 - ms) + l2 * tl.exp2(m2 - ms)


@triton.jit
def _merge_lse_t(m1, l1, t1, m2, l2, t2):
    """As _merge_lse, with t = sum 2^(s - max) * (s - max) carried into the new frame (for the entropy)."""
    m = tl.maximum(m1, m2)
    ms = tl.where(m == float("-inf"), 0.0, m)
    w1 = tl.exp2(m1 - ms)
    w2 = tl.exp2(m2 - ms)
    # An empty side has l = 0 and m = -inf: (m - ms) * l would be NaN, and it adds nothing.
    t = tl.where(l1 > 0.0, w1 * (t1 + (m1 - ms) * l1), 0.0) + tl.where(l2 > 0.0, w2 * (t2 + (m2 - ms) * l2), 0.0)
    return m, l1 * w1 + l2 * w2, t


@triton.jit
def _merge_cal_pol(m1, l1, mp1, lp1, m2, l2, mp2, lp2):
    m, l = _merge_lse(m1, l1, m2, l2)
    mp, lp = _merge_lse(mp1, lp1, mp2, lp2)
    return m, l, mp, lp


@triton.jit
def _merge_cal_t_pol(m1, l1, t1, mp1, lp1, m2, l2, t2, mp2, lp2):
    m, l, t = _merge_lse_t(m1, l1, t1, m2, l2, t2)
    mp, lp = _merge_lse(mp1, lp1, mp2, lp2)
    return m, l, t, mp, lp


@triton.jit
def program_statistics(m_c, l_c, t_c, m_p, l_p, SEPARATE_POLICY: tl.constexpr, RETURN_ENTROPY: tl.constexpr):
    """(M, L, T, MP, LP) of the program from its per-thread statistics, in one cross-warp reduction.

    M is the max calibrated score (-inf if nothing was allowed), L and T are relative to M (to 0 if M = -inf),
    likewise MP and LP for the policy scores. Without SEPARATE_POLICY the policy statistics are the calibrated ones.
    """
    if SEPARATE_POLICY:
        if RETURN_ENTROPY:
            M, L, T, MP, LP = tl.reduce((m_c, l_c, t_c, m_p, l_p), 0, _merge_cal_t_pol)
        else:
            M, L, MP, LP = tl.reduce((m_c, l_c, m_p, l_p), 0, _merge_cal_pol)
            T = tl.full([], 0.0, tl.float32)
    else:
        if RETURN_ENTROPY:
            M, L, T = tl.reduce((m_c, l_c, t_c), 0, _merge_lse_t)
        else:
            M, L = tl.reduce((m_c, l_c), 0, _merge_lse)
            T = tl.full([], 0.0, tl.float32)
        MP = M
        LP = L
    return M, L, T, MP, LP


@triton.jit
def _first_max(v1, i1, v2, i2):
    """The larger value with its index; on equal values the smaller index (torch.argmax's first maximum)."""
    take = (v2 > v1) | ((v2 == v1) & (i2 < i1))
    return tl.where(take, v2, v1), tl.where(take, i2, i1)


@triton.jit
def _first_max_scores(g1, i1, s1, p1, g2, i2, s2, p2):
    """_first_max over race scores g at positions i, carrying each position's calibrated and policy score."""
    take = (g2 > g1) | ((g2 == g1) & (i2 < i1))
    return tl.where(take, g2, g1), tl.where(take, i2, i1), tl.where(take, s2, s1), tl.where(take, p2, p1)


@triton.jit
def chunk_race(chunk_row, c_begin, c_end, vocab_offset, greedy, k0, k1, c1, c2, NB: tl.constexpr,
               N_ROUNDS: tl.constexpr):
    """First level, part 2 (as ``dlc_sample_kernel._chunk_race``): (best key, best chunk or -1) of the split."""
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
        kb, kc = tl.reduce((key, cid), 0, _first_max)
        take = kb > best_key
        best_key = tl.where(take, kb, best_key)
        best_chunk = tl.where(take, kc, best_chunk)
    return best_key, best_chunk


@triton.jit
def _pick(g, i, s, p, g_new, i_new, s_new, p_new):
    """Element-wise: the new quarter's entry where its race score is strictly larger (a tie keeps the earlier)."""
    take = g_new > g
    return tl.where(take, g_new, g), tl.where(take, i_new, i), tl.where(take, s_new, s), tl.where(take, p_new, p)


@triton.jit
def load_chunk(pol_row, mem_row, chunk, V, vocab_offset, HAS_MEMORY: tl.constexpr):
    """Second level, part 1: issue the loads of the winning chunk's logits (four quarters of 256 ids each).

    Nothing here waits for them: the caller reduces its statistics while they are in flight.
    """
    jj = tl.arange(0, 256)
    # A row with no chunk (everything masked) reads ids past the shard end: all masked off.
    base = tl.where(chunk >= 0, tl.maximum(chunk, 0) * 1024 - vocab_offset, V) + jj
    l1 = base + 256
    l2 = base + 512
    l3 = base + 768
    zp0, zm0 = _load_logits(pol_row, mem_row, base, (base >= 0) & (base < V), HAS_MEMORY)
    zp1, zm1 = _load_logits(pol_row, mem_row, l1, (l1 >= 0) & (l1 < V), HAS_MEMORY)
    zp2, zm2 = _load_logits(pol_row, mem_row, l2, (l2 >= 0) & (l2 < V), HAS_MEMORY)
    zp3, zm3 = _load_logits(pol_row, mem_row, l3, (l3 >= 0) & (l3 < V), HAS_MEMORY)
    return zp0, zm0, zp1, zm1, zp2, zm2, zp3, zm3


@triton.jit
def _race_scores(zp_raw, zm_raw, x, a, b, greedy, pthr, sthr, HAS_MEMORY: tl.constexpr, HAS_MASK: tl.constexpr):
    """(race score, calibrated score, policy score) of one quarter: Gumbel-max on the id noise word x."""
    zp, p, s = _scores_of(zp_raw, zm_raw, a, b, HAS_MEMORY)
    s = _masked(zp, s, pthr, sthr, HAS_MASK)
    return tl.where(greedy, s, s - tl.log2(_race_weight(x))), s, p


@triton.jit
def race_in_chunk(zp0, zm0, zp1, zm1, zp2, zm2, zp3, zm3, chunk, a, b, greedy, pthr, sthr, k0, k1, c1, c2,
                  HAS_MEMORY: tl.constexpr, HAS_MASK: tl.constexpr, N_ROUNDS: tl.constexpr):
    """Second level, part 2 (as ``dlc_sample_kernel._sample_in_chunk``): Gumbel-max over the chunk's 1024 ids with
    element noise (c3 = 0) on the loads of ``load_chunk``; (token or -1, its calibrated and policy score)."""
    jj = tl.arange(0, 256)
    cs = tl.maximum(chunk, 0)
    x0, x1, x2, x3 = _philox4x32((cs * 256 + jj).to(tl.uint32), c1, c2, c1 * 0, k0, k1, N_ROUNDS)
    g0, s0, p0 = _race_scores(zp0, zm0, x0, a, b, greedy, pthr, sthr, HAS_MEMORY, HAS_MASK)
    g1, s1, p1 = _race_scores(zp1, zm1, x1, a, b, greedy, pthr, sthr, HAS_MEMORY, HAS_MASK)
    g2, s2, p2 = _race_scores(zp2, zm2, x2, a, b, greedy, pthr, sthr, HAS_MEMORY, HAS_MASK)
    g3, s3, p3 = _race_scores(zp3, zm3, x3, a, b, greedy, pthr, sthr, HAS_MEMORY, HAS_MASK)
    # Per position j the first quarter holding its maximum, then the first maximum over j: together the smallest
    # id among equal scores, as in the plain tail (each quarter's position there is k * 256 + j).
    g, i, s, p = _pick(g0, jj, s0, p0, g1, jj + 256, s1, p1)
    g, i, s, p = _pick(g, i, s, p, g2, jj + 512, s2, p2)
    g, i, s, p = _pick(g, i, s, p, g3, jj + 768, s3, p3)
    best, pos, s2b, p2b = tl.reduce((g, i, s, p), 0, _first_max_scores)
    tok = tl.where((chunk < 0) | (best == float("-inf")), -1, cs * 1024 + pos)
    return tok, s2b, p2b
