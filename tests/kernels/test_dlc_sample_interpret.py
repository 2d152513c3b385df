"""Fused DLC sampling kernel vs its float32 reference, on the CPU through Triton's interpreter (small shapes)."""

import math

import pytest
import torch

from megatron_rlvr.kernels import DLCInvalidRowError, dlc_sample, dlc_sample_reference
from megatron_rlvr.kernels import dlc_sample_launcher as launcher
from megatron_rlvr.kernels.dlc_sample_args import finalize_partials, merge_partials

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _logits(rows, vocab, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    zp = (torch.randn(rows, vocab, generator=g) * scale).to(dtype)
    zm = (torch.randn(rows, vocab, generator=g) * scale).to(dtype)
    return zp, zm


def _noise(rows, vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, vocab, generator=g).clamp(1e-7, 1 - 1e-7)


def _assert_same(out, ref, entropy=True):
    assert torch.equal(out.tokens, ref.tokens)
    torch.testing.assert_close(out.logprob_cal, ref.logprob_cal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logprob_policy, ref.logprob_policy, atol=1e-5, rtol=1e-5)
    if entropy:
        torch.testing.assert_close(out.entropy, ref.entropy, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vocab", [1, 111, 1000, 4099])
@pytest.mark.parametrize("rows", [1, 7])
def test_kernel_equals_reference_given_explicit_noise(vocab, rows):
    zp, zm = _logits(rows, vocab, seed=vocab + rows)
    lam = torch.linspace(0.0, 1.5, rows)
    temperature = torch.linspace(0.5, 1.5, rows)
    u = _noise(rows, vocab)
    kwargs = dict(lam=lam, temperature=temperature, uniform_noise=u, return_entropy=True)
    _assert_same(dlc_sample(zp, zm, **kwargs), dlc_sample_reference(zp, zm, **kwargs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_equals_reference_for_half_precision_inputs(dtype):
    zp, zm = _logits(7, 1000, dtype=dtype)
    kwargs = dict(lam=0.7, temperature=0.9, uniform_noise=_noise(7, 1000), return_entropy=True)
    _assert_same(dlc_sample(zp, zm, **kwargs), dlc_sample_reference(zp, zm, **kwargs))


def test_kernel_rng_reproduces_the_reference_philox_stream():
    zp, zm = _logits(7, 4099)
    seed = torch.tensor([0, 1, 2, 3, 2**40 + 5, -7, 123456789], dtype=torch.int64)
    offset = torch.tensor([0, 5, 5, 1000, 3, 2**33, 17], dtype=torch.int64)
    kwargs = dict(lam=0.5, temperature=1.0, seed=seed, offset=offset, return_entropy=True)
    _assert_same(dlc_sample(zp, zm, **kwargs), dlc_sample_reference(zp, zm, **kwargs))


def test_same_seed_and_offset_give_the_same_token_whatever_the_batch_and_split(monkeypatch):
    zp, zm = _logits(3, 3000, seed=3)
    alone = [dlc_sample(zp[i:i + 1], zm[i:i + 1], lam=0.8, seed=11 + i, offset=9).tokens for i in range(3)]
    monkeypatch.setattr(launcher, "PROGRAMS_PER_SM", 9)  # 3 splits of one chunk instead of 2 of two
    monkeypatch.setattr(launcher, "MIN_CHUNKS_PER_SPLIT", 1)
    batched = dlc_sample(zp, zm, lam=0.8, seed=torch.arange(11, 14), offset=9).tokens
    assert torch.equal(torch.cat(alone), batched)
    repeat = dlc_sample(zp, zm, lam=0.8, seed=torch.arange(11, 14), offset=9).tokens
    assert torch.equal(batched, repeat)


def test_split_vocabulary_launch_equals_reference(monkeypatch):
    monkeypatch.setattr(launcher, "PROGRAMS_PER_SM", 8)
    assert launcher._split_plan(2, 4099, 0, torch.device("cpu"))[2] == 3  # 5 chunks of 1024 over 3 programs
    zp, zm = _logits(2, 4099, seed=5)
    kwargs = dict(lam=1.0, temperature=0.7, uniform_noise=_noise(2, 4099), return_entropy=True)
    _assert_same(dlc_sample(zp, zm, **kwargs), dlc_sample_reference(zp, zm, **kwargs))


def test_lambda_zero_equals_plain_policy_sampling():
    zp, zm = _logits(7, 1000, seed=8)
    plain = dlc_sample(zp, None, temperature=0.9, seed=4, offset=2, return_entropy=True)
    with_memory = dlc_sample(zp, zm, lam=0.0, temperature=0.9, seed=4, offset=2, return_entropy=True)
    _assert_same(with_memory, plain)
    torch.testing.assert_close(plain.logprob_cal, plain.logprob_policy)


def test_plausibility_masked_tokens_are_never_chosen():
    rows, vocab, tau = 7, 1000, 0.05
    zp, zm = _logits(rows, vocab, seed=2)
    # The memory model strongly prefers what the policy finds implausible: unmasked, those would win.
    zm = zp * 4
    kwargs = dict(lam=2.0, temperature=1.0, tau=tau, seed=torch.arange(rows), return_entropy=True)
    out = dlc_sample(zp, zm, **kwargs)
    allowed = zp >= zp.amax(1, keepdim=True) + math.log(tau)
    assert allowed.gather(1, out.tokens[:, None]).all()
    _assert_same(out, dlc_sample_reference(zp, zm, **kwargs))
    unmasked = dlc_sample(zp, zm, lam=2.0, seed=torch.arange(rows)).tokens
    assert not allowed.gather(1, unmasked[:, None]).all()


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (20, 0.8), (1, 1.0)])
def test_top_k_and_top_p_are_respected_and_match_reference(top_k, top_p):
    rows, vocab = 5, 111
    zp, zm = _logits(rows, vocab, seed=6)
    kwargs = dict(lam=0.5, temperature=0.8, top_k=top_k, top_p=top_p, uniform_noise=_noise(rows, vocab),
                  return_entropy=True)
    out = dlc_sample(zp, zm, **kwargs)
    _assert_same(out, dlc_sample_reference(zp, zm, **kwargs))
    s = (zp - 0.5 * zm) / 0.8
    rank = (s > s.gather(1, out.tokens[:, None])).sum(1)  # tokens scored strictly higher than the drawn one
    if top_k:
        assert (rank < top_k).all()
    if top_p < 1.0:
        probs = torch.softmax(s, 1)
        mass_above = torch.where(s > s.gather(1, out.tokens[:, None]), probs, 0).sum(1)
        assert (mass_above < top_p).all()


def test_temperature_zero_is_greedy_with_smallest_id_on_ties():
    zp, zm = _logits(3, 1000, seed=9)
    zp[0, 10] = zp[0, 700] = 50.0  # a tie: the smaller id wins, as torch.argmax
    out = dlc_sample(zp, zm, lam=0.3, temperature=0.0, seed=torch.arange(3))
    expect = torch.argmax(zp - 0.3 * zm, dim=1)
    assert torch.equal(out.tokens, expect) and out.tokens[0] == 10
    ref = dlc_sample_reference(zp, zm, lam=0.3, temperature=0.0, seed=torch.arange(3))
    torch.testing.assert_close(out.logprob_cal, ref.logprob_cal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logprob_cal, torch.log_softmax(zp - 0.3 * zm, 1).gather(1, expect[:, None])[:, 0],
                               atol=1e-5, rtol=1e-5)


def test_nan_rows_raise_by_default_and_are_flagged_without_check():
    zp, zm = _logits(3, 111)
    zp[1, 7] = float("nan")
    with pytest.raises(DLCInvalidRowError, match="row"):
        dlc_sample(zp, zm, lam=0.5)
    out = dlc_sample(zp, zm, lam=0.5, check_nan=False)
    assert out.tokens.tolist()[1] == -1 and math.isnan(out.logprob_cal[1]) and (out.tokens[[0, 2]] >= 0).all()
    ref = dlc_sample_reference(zp, zm, lam=0.5, check_nan=False)
    assert ref.tokens[1] == -1


def test_vocab_offset_makes_tokens_global_ids():
    zp, zm = _logits(2, 111)
    u = _noise(2, 111)
    out = dlc_sample(zp, zm, lam=0.2, uniform_noise=u, vocab_offset=5000)
    local = dlc_sample(zp, zm, lam=0.2, uniform_noise=u)
    assert torch.equal(out.tokens, local.tokens + 5000)


def test_bad_arguments_name_the_problem():
    zp, zm = _logits(2, 11)
    with pytest.raises(ValueError, match="tau"):
        dlc_sample(zp, zm, tau=1.5)
    with pytest.raises(ValueError, match="shape"):
        dlc_sample(zp, zm[:, :5])
    with pytest.raises(ValueError, match="temperature"):
        dlc_sample(zp, temperature=-1.0)
    with pytest.raises(ValueError, match="backend"):
        dlc_sample(zp, backend="cuda")


@pytest.mark.parametrize("use_noise", [False, True])
def test_kernel_shard_partials_merge_to_the_unsharded_result(use_noise):
    """The partials a tensor-parallel rank computes with the kernel (chunk-aligned cut, tau from the global
    max) merge into the unsharded reference's sample."""
    zp, zm = _logits(3, 3000, seed=12)
    u = _noise(3, 3000) if use_noise else None
    kwargs = dict(lam=0.6, seed=torch.arange(3), offset=2, tau=0.2, uniform_noise=u, return_entropy=True)
    full = dlc_sample_reference(zp, zm, **kwargs)
    threshold = zp.amax(1) + torch.tensor(math.log(0.2), dtype=torch.float32)
    parts = [launcher.dlc_partials(zp[:, a:b], zm[:, a:b], 0.6, 1.0, torch.arange(3), 2, a,
                                   None if u is None else u[:, a:b], threshold, return_entropy=True)
             for a, b in ((0, 2048), (2048, 3000))]
    merged, tokens = merge_partials(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
    _assert_same(finalize_partials(merged, tokens, return_entropy=True), full)


def test_last_program_of_a_split_row_merges_it_like_the_separate_combine_kernel(monkeypatch):
    # V = 4099 spans 5 chunks: the interpreter launch splits one row over 3 programs.
    zp, zm = _logits(1, 4099, seed=3)
    assert launcher._split_plan(1, 4099, 0, zp.device)[2] > 1
    kwargs = dict(lam=0.5, temperature=1.0, seed=11, offset=4, return_entropy=True)
    fused = dlc_sample(zp, zm, **kwargs)
    monkeypatch.setattr(launcher, "_arrival_counters", lambda rows, device: None)
    separate = dlc_sample(zp, zm, **kwargs)
    _assert_same(fused, separate)
    _assert_same(fused, dlc_sample_reference(zp, zm, **kwargs))
