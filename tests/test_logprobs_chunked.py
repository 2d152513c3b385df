"""Chunked vocab-parallel log-probs / entropy (update/logprobs.py) equal the full-vocabulary float32 reference.

Values and gradients, on awkward shapes (V = 151936 and its TP=2 shard 75968, V = 111 and 4099, ragged token
counts that no chunk size divides), in float32 (bitwise equal to Megatron's vocab_parallel_cross_entropy) and
bf16 logits; TP=2 over gloo; and no (tokens, V) float32 tensor is ever saved for the backward.
"""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.update.logprobs import reference_token_stats, token_stats
from tests.helpers.dist import run_distributed


def _inputs(n: int, v: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=g) * 3).to(dtype).requires_grad_(True)
    target = torch.randint(0, v, (n,), generator=g)
    return logits, target


def _grads(stats_fn, logits, target, w_lp, w_ent):
    lp, ent = stats_fn(logits, target)
    (lp * w_lp).sum().add((ent * w_ent).sum()).backward()
    grad = logits.grad.clone()
    logits.grad = None
    return lp.detach(), ent.detach(), grad


@pytest.mark.parametrize("n,v,chunk", [(1, 111, 1), (99, 111, 7), (37, 4099, 5), (7, 151936, 3), (5, 75968, 2)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_stats_and_gradients_equal_the_float32_reference(n, v, chunk, temperature):
    logits, target = _inputs(n, v, seed=n + v)
    w_lp, w_ent = torch.randn(n), torch.randn(n)
    ours = _grads(lambda x, t: token_stats(x, t, temperature, True, chunk_tokens=chunk), logits, target, w_lp, w_ent)
    ref = _grads(lambda x, t: reference_token_stats(x, t, temperature, torch.float64), logits, target, w_lp, w_ent)
    for a, b, name in zip(ours, ref, ("logprob", "entropy", "grad")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def single_rank():
    from megatron_rlvr.config import ParallelConfig
    from megatron_rlvr.distributed.parallel import init_distributed

    ctx = init_distributed({"policy": ParallelConfig()})
    yield ctx
    ctx.destroy()


@pytest.mark.parametrize("n,v,chunk", [(13, 111, 4), (6, 151936, 4)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_float32_log_probs_and_grads_are_bitwise_megatrons_cross_entropy(single_rank, n, v, chunk, temperature):
    from megatron.core import parallel_state, tensor_parallel

    logits, target = _inputs(n, v, seed=3)
    w = torch.randn(n)
    lp, _ = token_stats(logits, target, temperature, False, parallel_state.get_tensor_model_parallel_group(), chunk)
    (lp * w).sum().backward()
    ours_grad, logits.grad = logits.grad.clone(), None
    nll = tensor_parallel.vocab_parallel_cross_entropy(logits.float() / temperature, target)
    (-nll * w).sum().backward()
    assert torch.equal(lp.detach(), -nll.detach())
    assert torch.equal(ours_grad, logits.grad)


@pytest.mark.parametrize("v", [4099, 151936])
def test_bf16_logits_give_float32_stats_and_a_bf16_gradient_close_to_the_reference(v):
    n = 9
    logits, target = _inputs(n, v, torch.bfloat16, seed=v)
    w_lp, w_ent = torch.randn(n), torch.randn(n)
    lp, ent, grad = _grads(lambda x, t: token_stats(x, t, 1.0, True, chunk_tokens=4), logits, target, w_lp, w_ent)
    assert lp.dtype == ent.dtype == torch.float32 and grad.dtype == torch.bfloat16
    # The reference sees the same bf16 values upcast (float64 math): the only differences are float32 rounding
    # and the bf16 rounding of the returned gradient.
    up = logits.detach().float().requires_grad_(True)
    r_lp, r_ent, r_grad = _grads(lambda x, t: reference_token_stats(x, t, 1.0, torch.float64), up, target, w_lp, w_ent)
    torch.testing.assert_close(lp, r_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, r_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), r_grad, rtol=1.6e-2, atol=1e-5)


def test_no_tokens_by_vocab_float32_tensor_is_saved_for_the_backward():
    n, v = 64, 4099
    logits, target = _inputs(n, v, torch.bfloat16)
    saved: list[torch.Tensor] = []

    def keep(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        lp, ent = token_stats(logits, target, 1.0, True, chunk_tokens=8)
    big_fp32 = [tuple(t.shape) for t in saved if t.dtype == torch.float32 and t.numel() >= 8 * v]
    assert big_fp32 == []
    assert any(t is logits or t.data_ptr() == logits.data_ptr() for t in saved), "the bf16 input is what is saved"


def test_gradient_of_the_log_prob_alone_matches_when_the_entropy_is_unused():
    n, v = 11, 111
    logits, target = _inputs(n, v)
    lp, ent = token_stats(logits, target, 1.0, True, chunk_tokens=3)
    lp.sum().backward()
    ours, logits.grad = logits.grad.clone(), None
    r_lp, _ = reference_token_stats(logits, target)
    r_lp.sum().backward()
    torch.testing.assert_close(ours, logits.grad, rtol=1e-5, atol=1e-6)


def test_shape_mismatch_and_bad_temperature_are_refused():
    logits, target = _inputs(4, 111)
    with pytest.raises(ValueError, match="target shape"):
        token_stats(logits, target[:3])
    with pytest.raises(ValueError, match="temperature"):
        token_stats(logits, target, temperature=0.0)


# ------------------------------------------------------------------------------------------------ TP=2, gloo
def _tp2_rank(n: int, v: int, chunk: int):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    logits, target = _inputs(n, v, seed=5)
    w_lp, w_ent = torch.randn(n, generator=torch.Generator().manual_seed(1)), torch.randn(
        n, generator=torch.Generator().manual_seed(2))
    shard = logits.detach()[:, rank * v // 2:(rank + 1) * v // 2].clone().requires_grad_(True)
    lp, ent, grad = _grads(lambda x, t: token_stats(x, t, 0.9, True, dist.group.WORLD, chunk), shard, target,
                           w_lp, w_ent)
    dist.destroy_process_group()
    return lp, ent, grad


@pytest.mark.parametrize("n,v,chunk", [(23, 222, 5), (4, 151936, 3)])
def test_tensor_parallel_shards_over_gloo_equal_the_full_vocabulary_reference(n, v, chunk):
    r0, r1 = run_distributed(_tp2_rank, world_size=2, args=(n, v, chunk), timeout=120)
    logits, target = _inputs(n, v, seed=5)
    w_lp = torch.randn(n, generator=torch.Generator().manual_seed(1))
    w_ent = torch.randn(n, generator=torch.Generator().manual_seed(2))
    ref = _grads(lambda x, t: reference_token_stats(x, t, 0.9, torch.float64), logits, target, w_lp, w_ent)
    for rank_out in (r0, r1):
        torch.testing.assert_close(rank_out[0], ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rank_out[1], ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r0[2], r1[2]], dim=1), ref[2], rtol=1e-5, atol=1e-6)
