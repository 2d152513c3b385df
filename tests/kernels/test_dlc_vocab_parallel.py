"""Vocabulary-parallel DLC sampling: 2 gloo ranks on the CPU, each holding half of the vocabulary, give the
unsharded sampler's result on every rank."""

import math

import pytest
import torch

from tests.helpers.dist import run_distributed


def _inputs(vocab: int):
    g = torch.Generator().manual_seed(vocab)
    zp = torch.randn(8, vocab, generator=g) * 3
    zm = torch.randn(8, vocab, generator=g) * 3
    u = torch.rand(8, vocab, generator=g).clamp(1e-7, 1 - 1e-7)
    return zp, zm, u


def _sharded_sample(vocab: int, tau, use_noise: bool):
    """Runs on each rank: sample from this rank's half of the vocabulary."""
    import torch.distributed as dist

    from megatron_rlvr.kernels import dlc_sample_vocab_parallel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    zp, zm, u = _inputs(vocab)
    half = vocab // 2
    cols = slice(rank * half, (rank + 1) * half)
    out = dlc_sample_vocab_parallel(zp[:, cols], zm[:, cols], lam=0.7, temperature=0.9, seed=torch.arange(8) * 31,
                                    offset=5, tau=tau, uniform_noise=u[:, cols] if use_noise else None,
                                    return_entropy=True)
    dist.destroy_process_group()
    return {k: v.tolist() for k, v in vars(out).items()}


@pytest.mark.parametrize("vocab,tau,use_noise", [(4096, None, False), (4096, 0.05, False), (3000, None, True),
                                                 (3000, 0.1, True)])
def test_two_gloo_ranks_equal_the_unsharded_sampler(vocab, tau, use_noise):
    from megatron_rlvr.kernels import dlc_sample_reference

    results = run_distributed(_sharded_sample, world_size=2, args=(vocab, tau, use_noise), timeout=240)
    assert results[0] == results[1]  # every rank holds the same answer
    zp, zm, u = _inputs(vocab)
    ref = dlc_sample_reference(zp, zm, lam=0.7, temperature=0.9, seed=torch.arange(8) * 31, offset=5, tau=tau,
                               uniform_noise=u if use_noise else None, return_entropy=True)
    # Shards of 2048 ids are chunk-aligned, so even the RNG draw is token-identical; with explicit noise any cut is.
    assert results[0]["tokens"] == ref.tokens.tolist()
    for key in ("logprob_cal", "logprob_policy", "entropy"):
        torch.testing.assert_close(torch.tensor(results[0][key]), getattr(ref, key), atol=1e-5, rtol=1e-5)
    if tau is not None:
        allowed = zp >= zp.amax(1, keepdim=True) + math.log(tau)
        assert bool(allowed.gather(1, torch.tensor(results[0]["tokens"])[:, None]).all())


def test_top_k_is_refused_in_the_vocab_parallel_form():
    from megatron_rlvr.kernels import dlc_sample_vocab_parallel

    with pytest.raises(ValueError, match="top_k/top_p"):
        dlc_sample_vocab_parallel(torch.zeros(2, 8), top_k=3)
