"""The float32 PyTorch reference of the DLC sampler: its draws follow pi_cal (chi-square, fixed seeds), its Philox
matches the published known-answer vectors, and its partial statistics merge to the unsharded result."""

import math

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample_reference
from megatron_rlvr.kernels.dlc_sample_args import finalize_partials, merge_partials
from megatron_rlvr.kernels.dlc_sample_reference import dlc_partials_reference
from megatron_rlvr.kernels.philox import philox4x32


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper-tail p-value of Pearson's chi-square for counts against probabilities (bins with p > 0)."""
    keep = probs > 0
    n = counts.sum()
    expected = probs[keep].double() * n
    chi2 = ((counts[keep].double() - expected) ** 2 / expected).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), chi2 / 2))


def _draw_counts(zp, zm, draws, **kwargs):
    """Counts over the vocabulary of `draws` samples of one row (rows of a batch with distinct seeds)."""
    rows = 4096
    counts = torch.zeros(zp.shape[1], dtype=torch.float64)
    for rep in range(draws // rows):
        out = dlc_sample_reference(zp.expand(rows, -1), None if zm is None else zm.expand(rows, -1),
                                   seed=torch.arange(rows) + 17, offset=rep, **kwargs)
        counts += torch.bincount(out.tokens, minlength=zp.shape[1]).double()
    return counts


def test_philox_matches_the_random123_known_answer_vectors():
    def run(ctr, key):
        t = [torch.tensor([v]) for v in (*ctr, *key)]
        return [int(w) for w in philox4x32(*t)]

    assert run((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert run((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("lam,temperature,tau", [(0.0, 1.0, None), (0.7, 0.8, None), (1.5, 1.2, 0.05)])
def test_reference_draws_follow_pi_cal(lam, temperature, tau):
    """16384 draws over a 2500-id vocabulary (3 chunks of the two-level sampler) vs the exact softmax."""
    g = torch.Generator().manual_seed(3)
    zp = torch.randn(1, 2500, generator=g) - 4.0
    zp[0, torch.randperm(2500, generator=g)[:24]] += 4.0 + 2 * torch.rand(24, generator=g)
    zm = torch.randn(1, 2500, generator=g) * 2
    counts = _draw_counts(zp, zm, 4 * 4096, lam=lam, temperature=temperature, tau=tau)
    s = (zp - lam * zm) / temperature
    if tau is not None:
        s = torch.where(zp >= zp.amax() + math.log(tau), s, -math.inf)
    probs = torch.softmax(s, 1)[0]
    likely = probs > 1e-3  # pool the tail so every bin expects >= 5 draws
    binned_p = torch.cat([probs[likely], probs[~likely].sum()[None]])
    binned_c = torch.cat([counts[likely], counts[~likely].sum()[None]])
    assert _chi_square_p_value(binned_c, binned_p) > 1e-3
    assert counts[probs == 0].sum() == 0


def test_reference_log_probs_and_entropy_are_those_of_pi_cal_and_the_policy():
    g = torch.Generator().manual_seed(4)
    zp, zm = torch.randn(5, 300, generator=g) * 2, torch.randn(5, 300, generator=g) * 2
    out = dlc_sample_reference(zp, zm, lam=0.4, temperature=0.7, seed=torch.arange(5), return_entropy=True)
    logp = torch.log_softmax((zp - 0.4 * zm) / 0.7, 1)
    torch.testing.assert_close(out.logprob_cal, logp.gather(1, out.tokens[:, None])[:, 0])
    torch.testing.assert_close(out.logprob_policy, torch.log_softmax(zp / 0.7, 1).gather(1, out.tokens[:, None])[:, 0])
    torch.testing.assert_close(out.entropy, -(logp.exp() * logp).sum(1))


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    zp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = set(dlc_sample_reference(zp.expand(512, -1), top_p=0.8, seed=torch.arange(512)).tokens.tolist())
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.8; id 2 is cut
    seen = set(dlc_sample_reference(zp.expand(512, -1), top_p=0.81, seed=torch.arange(512)).tokens.tolist())
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("cut", [1024, 2048, 1500])
def test_shard_partials_merge_to_the_unsharded_result(cut):
    """Two vocabulary shards merged with the combine algebra equal the unsharded sampler (explicit noise, and
    the RNG when the cut is chunk-aligned; a cut inside a chunk gives its right part independent noise)."""
    g = torch.Generator().manual_seed(cut)
    zp, zm = torch.randn(6, 3000, generator=g) * 3, torch.randn(6, 3000, generator=g) * 3
    u = torch.rand(6, 3000, generator=g).clamp(1e-7, 1 - 1e-7)
    for noise in (u, None):
        full = dlc_sample_reference(zp, zm, lam=0.6, seed=torch.arange(6), offset=2, uniform_noise=noise,
                                    return_entropy=True)
        parts = [dlc_partials_reference(zp[:, a:b], zm[:, a:b], 0.6, 1.0, torch.arange(6), 2, a,
                                        None if noise is None else noise[:, a:b], None)
                 for a, b in ((0, cut), (cut, 3000))]
        merged, tok = merge_partials(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
        out = finalize_partials(merged, tok, return_entropy=True)
        torch.testing.assert_close(out.entropy, full.entropy)
        if noise is not None or cut % 1024 == 0:
            assert torch.equal(out.tokens, full.tokens)
            torch.testing.assert_close(out.logprob_cal, full.logprob_cal)
            torch.testing.assert_close(out.logprob_policy, full.logprob_policy)
