"""The fused log-prob / entropy kernels of the update stage (kernels/token_stats_kernel.py) equal their float64
PyTorch reference and the chunked PyTorch path, values and gradients, on awkward shapes: vocabularies that are no
multiple of the block, Qwen3's V = 151936 and its TP = 2 shard, rows whose target is on another shard, no rows."""

import pytest
import torch

from megatron_rlvr.kernels.token_stats_kernel import (token_stats_backward, token_stats_backward_reference,
                                                      token_stats_forward, token_stats_forward_reference)
from megatron_rlvr.update.logprobs import reference_token_stats, token_stats

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _inputs(n: int, vocab: int, dtype: torch.dtype, seed: int = 0, scale: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g) * scale).to(dtype)
    local = torch.randint(0, vocab, (n,), generator=g)
    in_shard = torch.rand(n, generator=g) > 0.3
    return logits, torch.where(in_shard, local, torch.zeros_like(local)), in_shard


@pytest.mark.parametrize("n,vocab,dtype,temperature,with_entropy", [
    (5, 300, torch.float32, 1.0, True),     # V not a multiple of the block, a partial last block
    (3, 1000, torch.bfloat16, 0.7, True),   # bf16 in, T != 1
    (4, 17, torch.float32, 1.3, False),     # V smaller than one block
    (2, 151936, torch.bfloat16, 1.0, True),  # Qwen3's vocabulary
    (2, 75968, torch.bfloat16, 0.9, False),  # its TP = 2 shard
])
def test_forward_statistics_equal_the_float64_reference(n, vocab, dtype, temperature, with_entropy):
    logits, local, in_shard = _inputs(n, vocab, dtype, seed=vocab)
    row_max, sums = token_stats_forward(logits, local, in_shard, temperature, with_entropy)
    ref_max, ref_sums = token_stats_forward_reference(logits, local, in_shard, temperature, with_entropy)
    assert sums.shape == ref_sums.shape == (3 if with_entropy else 2, n)
    torch.testing.assert_close(row_max, ref_max, rtol=1e-6, atol=1e-6)  # z = x * (1 / T): one float32 rounding
    torch.testing.assert_close(sums, ref_sums, rtol=2e-5, atol=2e-5)
    assert (sums[0][~in_shard] == 0).all()  # a target on another shard contributes nothing here


@pytest.mark.parametrize("n,vocab,dtype,temperature,with_entropy", [
    (5, 300, torch.float32, 1.0, True), (3, 1000, torch.bfloat16, 0.7, False), (2, 151936, torch.bfloat16, 1.0, True),
])
def test_backward_gradient_equals_the_float64_reference(n, vocab, dtype, temperature, with_entropy):
    logits, local, in_shard = _inputs(n, vocab, dtype, seed=vocab + 1)
    row_max, sums = token_stats_forward_reference(logits, local, in_shard, temperature, True)
    sum_exp, mean_z = sums[1], sums[2] / sums[1]
    g = torch.Generator().manual_seed(3)
    grad_lp, grad_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    args = (logits, local, in_shard, row_max, sum_exp, mean_z if with_entropy else None, grad_lp,
            grad_ent if with_entropy else None, temperature)
    grad = token_stats_backward(*args)
    ref = token_stats_backward_reference(*args)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(grad, ref, **tol)


def test_no_rows_give_empty_statistics_and_gradients():
    logits = torch.zeros(0, 300)
    local, in_shard = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
    row_max, sums = token_stats_forward(logits, local, in_shard, 1.0, True)
    assert row_max.shape == (0,) and sums.shape == (3, 0)
    assert token_stats_backward(logits, local, in_shard, row_max, sums[1], None, row_max, None, 1.0).shape == (0, 300)


@pytest.mark.parametrize("temperature,with_entropy", [(1.0, True), (0.8, True), (1.0, False)])
def test_triton_token_stats_equal_the_chunked_pytorch_path_in_values_and_gradients(temperature, with_entropy):
    # what the trainer calls: ragged token counts (7 x 5 rows), V = 1000, targets anywhere in the vocabulary
    g = torch.Generator().manual_seed(11)
    base = torch.randn(7, 5, 1000, generator=g) * 3
    target = torch.randint(0, 1000, (7, 5), generator=g)
    w_lp, w_ent = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    results = {}
    for impl in ("torch", "triton"):
        logits = base.clone().requires_grad_(True)
        lp, ent = token_stats(logits, target, temperature, with_entropy, chunk_tokens=4, impl=impl)
        loss = (lp * w_lp).sum() + ((ent * w_ent).sum() if with_entropy else 0.0)
        loss.backward()
        results[impl] = (lp.detach(), ent.detach() if with_entropy else None, logits.grad)
    (lp_t, ent_t, g_t), (lp_k, ent_k, g_k) = results["torch"], results["triton"]
    torch.testing.assert_close(lp_k, lp_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_k, g_t, rtol=1e-5, atol=1e-6)
    ref_lp, ref_ent = reference_token_stats(base.double(), target, temperature, torch.float64)
    torch.testing.assert_close(lp_k, ref_lp, rtol=1e-5, atol=1e-5)
    if with_entropy:
        torch.testing.assert_close(ent_k, ent_t, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent_k, ref_ent, rtol=1e-5, atol=1e-5)


def test_an_unknown_impl_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="torch.*triton"):
        token_stats(torch.zeros(2, 5), torch.zeros(2, dtype=torch.int64), impl="cuda")


def _tp2_rank(n: int, vocab: int):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    logits, target, w_lp, w_ent = _tp_inputs(n, vocab)
    shard = logits[:, rank * vocab // 2:(rank + 1) * vocab // 2].clone().requires_grad_(True)
    lp, ent = token_stats(shard, target, 0.9, True, dist.group.WORLD, impl="triton")
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    dist.destroy_process_group()
    return lp.detach(), ent.detach(), shard.grad


def _tp_inputs(n: int, vocab: int):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(n, vocab, generator=g) * 3
    target = torch.randint(0, vocab, (n,), generator=g)  # about half the targets on each shard
    return logits, target, torch.randn(n, generator=g), torch.randn(n, generator=g)


def test_tensor_parallel_shards_over_gloo_equal_the_full_vocabulary_reference():
    from tests.helpers.dist import run_distributed

    n, vocab = 9, 602
    r0, r1 = run_distributed(_tp2_rank, world_size=2, args=(n, vocab), timeout=180, env={"TRITON_INTERPRET": "1"})
    logits, target, w_lp, w_ent = _tp_inputs(n, vocab)
    full = logits.double().requires_grad_(True)
    ref_lp, ref_ent = reference_token_stats(full, target, 0.9, torch.float64)
    ((ref_lp * w_lp).sum() + (ref_ent * w_ent).sum()).backward()
    for lp, ent, _ in (r0, r1):
        torch.testing.assert_close(lp, ref_lp.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent, ref_ent.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r0[2], r1[2]], dim=1), full.grad.float(), rtol=1e-5, atol=1e-6)
