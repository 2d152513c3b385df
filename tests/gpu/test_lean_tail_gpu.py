"""The lean stage-1 tail (kernels/dlc_sample_tail.py, the default) against the plain one on a CUDA GPU.

Both tails see the same chunk values and noise, so every token must be equal at Qwen3's vocabulary, in each
launch shape the rule picks (split rows with the in-kernel merge at small B, one program per row at large B);
log-probabilities and entropy differ only by float32 summation order. The other GPU kernel tests (exactness
against the reference, masks, the million-draw distribution test) run the default, i.e. the lean tail.

Run on a GPU machine: ``pytest -m gpu tests/gpu/test_lean_tail_gpu.py -q``.
"""

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample
from megatron_rlvr.kernels import dlc_sample_launcher as launcher

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

QWEN3_VOCAB = 151936
TOL = dict(atol=2e-5, rtol=2e-5)


def _logits(rows, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    zp = (torch.randn(rows, QWEN3_VOCAB, device="cuda", generator=g) * 3).to(dtype)
    zm = (torch.randn(rows, QWEN3_VOCAB, device="cuda", generator=g) * 3).to(dtype)
    return zp, zm


def _both(monkeypatch, *args, **kwargs):
    outs = {}
    for variant in ("plain", "lean"):
        monkeypatch.setattr(launcher, "VARIANT", variant)
        launcher.clear_launch_caches()
        outs[variant] = dlc_sample(*args, **kwargs)
    return outs["lean"], outs["plain"]


def _assert_same(lean, plain):
    mismatch = torch.nonzero(lean.tokens != plain.tokens).flatten().tolist()
    assert not mismatch, f"lean and plain tails drew different tokens in rows {mismatch[:8]}"
    torch.testing.assert_close(lean.logprob_cal, plain.logprob_cal, **TOL)
    torch.testing.assert_close(lean.logprob_policy, plain.logprob_policy, **TOL)
    if plain.entropy is not None:
        torch.testing.assert_close(lean.entropy, plain.entropy, **TOL)


@pytest.mark.parametrize("rows", [1, 64, 256, 1024])
@pytest.mark.parametrize("entropy", [False, True])
def test_lean_tail_draws_the_plain_tails_tokens_in_every_launch_shape(rows, entropy, monkeypatch):
    zp, zm = _logits(rows, seed=rows)
    seed = torch.arange(rows, device="cuda") * 7919 + 3
    lean, plain = _both(monkeypatch, zp, zm, lam=0.5, temperature=0.9, seed=seed, offset=11,
                        return_entropy=entropy, check_nan=False)
    _assert_same(lean, plain)


@pytest.mark.parametrize("mask", [dict(tau=0.05), dict(top_k=50), dict(top_p=0.8)])
def test_lean_tail_matches_the_plain_tail_under_masks(mask, monkeypatch):
    zp, zm = _logits(99, seed=7)
    lean, plain = _both(monkeypatch, zp, zm, lam=0.8, seed=torch.arange(99, device="cuda"), offset=2,
                        return_entropy=True, **mask)
    _assert_same(lean, plain)


def test_lean_tail_greedy_is_argmax_with_ties_to_the_smallest_id(monkeypatch):
    zp, zm = _logits(64, seed=9)
    # A tie inside chunk 4: id 4100 (quarter 0, position 4) and id 4353 (quarter 1, position 1). An argmax over
    # positions before quarters would pick 4353; the smallest id is 4100.
    zp[3, [4353, 4100]] = 60.0
    lean, plain = _both(monkeypatch, zp, zm, lam=0.0, temperature=0.0)
    assert torch.equal(lean.tokens, torch.argmax(zp.float(), dim=1)) and int(lean.tokens[3]) == 4100
    _assert_same(lean, plain)


def test_lean_tail_in_a_cuda_graph_replays_the_eager_tokens(monkeypatch):
    monkeypatch.setattr(launcher, "VARIANT", "lean")
    launcher.clear_launch_caches()
    zp, zm = _logits(256, seed=3)
    seed = torch.arange(256, device="cuda")
    eager = dlc_sample(zp, zm, lam=0.5, seed=seed, offset=5, return_entropy=True, check_nan=False)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dlc_sample(zp, zm, lam=0.5, seed=seed, offset=5, return_entropy=True, check_nan=False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = dlc_sample(zp, zm, lam=0.5, seed=seed, offset=5, return_entropy=True, check_nan=False)
    for _ in range(3):  # repeated replays reuse the self-resetting arrival counters
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured.tokens, eager.tokens)
        torch.testing.assert_close(captured.logprob_cal, eager.logprob_cal, atol=0, rtol=0)
