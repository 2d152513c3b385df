"""Fused DLC sampling kernel on a CUDA GPU at Qwen3's vocabulary (V = 151936): exactness against the float32
reference, masks, and the sampling distribution through the kernel's own RNG (>= 1M draws).

Run on a GPU machine: ``pytest -m gpu tests/gpu/test_kernels_gpu.py -q``.
"""

import math

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample, dlc_sample_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

QWEN3_VOCAB = 151936
# Float32 sums over 151936 terms in a different order (and exp2/log2 approximations) than torch's.
LOGPROB_TOL = dict(atol=5e-5, rtol=2e-5)


def _logits(rows, vocab=QWEN3_VOCAB, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    zp = (torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(dtype)
    zm = (torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(dtype)
    return zp, zm


def _near_tie_rows(zp, zm, lam, temperature, u, rows):
    """Rows whose two best race scores differ by < 1e-4: there float rounding may pick either token."""
    s = (zp.float() - lam * zm.float()) / temperature
    race = (s - torch.log(-torch.log(u)))[rows]
    top2 = race.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) < 1e-4


def _assert_matches_reference(out, ref, zp, zm, lam, temperature, u):
    mismatch = torch.nonzero(out.tokens != ref.tokens).flatten()
    if mismatch.numel():
        ties = _near_tie_rows(zp, zm, lam, temperature, u, mismatch)
        assert bool(ties.all()) and mismatch.numel() <= 2, f"token mismatch in rows {mismatch.tolist()}"
    same = out.tokens == ref.tokens
    torch.testing.assert_close(out.logprob_cal[same], ref.logprob_cal[same], **LOGPROB_TOL)
    torch.testing.assert_close(out.logprob_policy[same], ref.logprob_policy[same], **LOGPROB_TOL)
    if out.entropy is not None:
        torch.testing.assert_close(out.entropy, ref.entropy, **LOGPROB_TOL)


@pytest.mark.parametrize("rows", [1, 99, 989])
def test_kernel_equals_reference_at_qwen3_vocab_given_explicit_noise(rows):
    zp, zm = _logits(rows, seed=rows)
    g = torch.Generator(device="cuda").manual_seed(7)
    u = torch.rand(rows, QWEN3_VOCAB, device="cuda", generator=g).clamp(1e-7, 1 - 1e-7)
    out = dlc_sample(zp, zm, lam=0.6, temperature=0.9, uniform_noise=u, return_entropy=True)
    ref = dlc_sample_reference(zp, zm, lam=0.6, temperature=0.9, uniform_noise=u, return_entropy=True)
    _assert_matches_reference(out, ref, zp, zm, 0.6, 0.9, u)


@pytest.mark.parametrize("rows", [1, 99, 989])
def test_kernel_rng_reproduces_the_reference_two_level_draw(rows):
    zp, zm = _logits(rows, seed=100 + rows)
    seed = torch.arange(rows, device="cuda") * 7919 + 3
    offset = torch.full((rows,), 12345, device="cuda")
    out = dlc_sample(zp, zm, lam=0.4, seed=seed, offset=offset, return_entropy=True)
    ref = dlc_sample_reference(zp, zm, lam=0.4, seed=seed, offset=offset, return_entropy=True)
    # Chunk keys are float sums over 1024 ids in another order: a near-tie between two chunks may flip.
    same = out.tokens == ref.tokens
    assert int((~same).sum()) <= rows // 500, f"token mismatch in rows {torch.nonzero(~same).flatten().tolist()}"
    torch.testing.assert_close(out.logprob_cal[same], ref.logprob_cal[same], **LOGPROB_TOL)
    torch.testing.assert_close(out.logprob_policy[same], ref.logprob_policy[same], **LOGPROB_TOL)
    torch.testing.assert_close(out.entropy, ref.entropy, **LOGPROB_TOL)


def test_same_seed_and_offset_give_the_same_token_in_any_batch():
    zp, zm = _logits(64, seed=5)
    seed = torch.arange(64, device="cuda")
    batched = dlc_sample(zp, zm, lam=0.5, seed=seed, offset=3).tokens
    alone = torch.cat([dlc_sample(zp[i:i + 1], zm[i:i + 1], lam=0.5, seed=i, offset=3).tokens for i in range(0, 64, 9)])
    assert torch.equal(batched[::9], alone)
    assert not torch.equal(batched, dlc_sample(zp, zm, lam=0.5, seed=seed, offset=4).tokens)


def test_plausibility_masked_tokens_are_never_chosen_at_qwen3_vocab():
    zp, _ = _logits(989, seed=11)
    zm = zp * 4  # memory loves the policy's likely tokens: subtracting it promotes implausible ones
    tau = 0.05
    out = dlc_sample(zp, zm, lam=2.0, tau=tau, seed=torch.arange(989, device="cuda"), return_entropy=True)
    allowed = zp.float() >= zp.float().amax(1, keepdim=True) + math.log(tau)
    assert bool(allowed.gather(1, out.tokens[:, None]).all())
    ref = dlc_sample_reference(zp, zm, lam=2.0, tau=tau, seed=torch.arange(989, device="cuda"), return_entropy=True)
    assert (out.tokens == ref.tokens).float().mean() > 0.995


@pytest.mark.parametrize("top_k,top_p", [(50, 1.0), (0, 0.9), (40, 0.7)])
def test_top_k_top_p_respected_at_qwen3_vocab(top_k, top_p):
    rows = 99
    zp, zm = _logits(rows, seed=21)
    out = dlc_sample(zp, zm, lam=0.3, temperature=0.8, top_k=top_k, top_p=top_p, seed=torch.arange(rows,
                     device="cuda"))
    ref = dlc_sample_reference(zp, zm, lam=0.3, temperature=0.8, top_k=top_k, top_p=top_p,
                               seed=torch.arange(rows, device="cuda"))
    assert (out.tokens == ref.tokens).float().mean() > 0.98
    s = (zp.float() - 0.3 * zm.float()) / 0.8
    higher = s > s.gather(1, out.tokens[:, None])
    if top_k:
        assert bool((higher.sum(1) < top_k).all())
    if top_p < 1.0:
        assert bool((torch.where(higher, torch.softmax(s, 1), 0).sum(1) < top_p).all())


def test_greedy_equals_argmax_at_qwen3_vocab():
    zp, zm = _logits(99, seed=31)
    out = dlc_sample(zp, zm, lam=0.7, temperature=0.0)
    assert torch.equal(out.tokens, torch.argmax(zp.float() - 0.7 * zm.float(), dim=1))


@pytest.mark.parametrize("lam,tau", [(0.0, None), (0.8, 0.02)])
def test_distribution_of_a_million_draws_matches_pi_cal(lam, tau):
    """1,048,576 draws through the kernel's Philox stream; chi-square over the 63 likeliest ids + the rest."""
    g = torch.Generator(device="cuda").manual_seed(41)
    zp = torch.randn(1, QWEN3_VOCAB, device="cuda", generator=g) - 6.0
    zp[0, torch.randperm(QWEN3_VOCAB, generator=g, device="cuda")[:200]] += 6.0 + torch.rand(200, device="cuda",
                                                                                              generator=g) * 3
    zm = torch.randn(1, QWEN3_VOCAB, device="cuda", generator=g)
    zp, zm = zp.to(torch.bfloat16), zm.to(torch.bfloat16)
    rows, reps = 8192, 128
    counts = torch.zeros(QWEN3_VOCAB, device="cuda", dtype=torch.float64)
    for rep in range(reps):  # stride-0 rows: 8192 views of one row, one seed each
        out = dlc_sample(zp.expand(rows, -1), zm.expand(rows, -1), lam=lam, tau=tau,
                         seed=torch.arange(rows, device="cuda") + 1000, offset=rep)
        counts += torch.bincount(out.tokens, minlength=QWEN3_VOCAB).double()
    ref = dlc_sample_reference(zp, zm, lam=lam, tau=tau, seed=0)
    s = zp.float() - lam * zm.float()
    if tau is not None:
        s = torch.where(zp.float() >= zp.float().amax() + math.log(tau), s, -math.inf)
    p = torch.softmax(s.double(), 1)[0]
    n = counts.sum()
    assert n == rows * reps and ref.tokens.numel() == 1
    top = p.topk(63).indices
    rest = torch.ones_like(p, dtype=torch.bool)
    rest[top] = False
    observed = torch.cat([counts[top], counts[rest].sum()[None]])
    expected = torch.cat([p[top], p[rest].sum()[None]]) * n
    chi2 = ((observed - expected) ** 2 / expected).sum()
    p_value = torch.special.gammaincc(torch.tensor(63 / 2, dtype=torch.float64), chi2.cpu() / 2)
    assert p_value > 1e-3, f"chi2={chi2.item():.1f} on 63 dof, p={p_value.item():.2e}"
    assert counts[p == 0].sum() == 0  # masked ids never drawn


@pytest.mark.parametrize("rows", [1, 32, 256])
def test_split_rows_merged_in_kernel_equal_the_combine_kernel_and_leave_counters_at_zero(rows, monkeypatch):
    from megatron_rlvr.kernels import dlc_sample_launcher as launcher

    zp, zm = _logits(rows, seed=rows)
    # At least 3 programs per SM, whatever the shipped rule says: B = 256 then splits its rows too.
    monkeypatch.setattr(launcher, "PROGRAMS_PER_SM", max(3, launcher.PROGRAMS_PER_SM))
    assert launcher._split_plan(rows, QWEN3_VOCAB, 0, zp.device)[2] > 1
    seed = torch.arange(rows, device="cuda", dtype=torch.int64) * 7 + 1
    kwargs = dict(lam=0.5, temperature=1.0, seed=seed, offset=9, return_entropy=True)
    fused = [dlc_sample(zp, zm, **kwargs) for _ in range(3)]  # repeated calls reuse the self-resetting counters
    assert all(int(buf.abs().sum()) == 0 for buf in launcher._COUNTERS.values())
    with monkeypatch.context() as m:
        m.setattr(launcher, "_arrival_counters", lambda r, d: None)
        separate = dlc_sample(zp, zm, **kwargs)
    # Same tokens; floats to rounding (the in-kernel merge is compiled with the pass's warp count, so its
    # reductions may associate differently from the one-warp combine kernel's: 1-ulp entropy differences seen).
    for out in fused:
        assert torch.equal(out.tokens, separate.tokens)
        for a, b in [(out.logprob_cal, separate.logprob_cal), (out.logprob_policy, separate.logprob_policy),
                     (out.entropy, separate.entropy)]:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
