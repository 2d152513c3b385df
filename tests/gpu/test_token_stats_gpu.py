"""The fused log-prob / entropy kernels (kernels/token_stats_kernel.py, `model.logprob_impl=triton`) on CUDA:
bf16 logits at Qwen3's V = 151936 and its TP = 2 shard against the float64 reference (values and gradients), equal
to the chunked PyTorch path, no (tokens, V) float32 tensor in memory, and the time of both paths side by side."""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.update.logprobs import reference_token_stats, token_stats

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine; "
                       "see tests/gpu/README.md)"),
]
V = 151936


def _run(impl: str, logits: torch.Tensor, target, w_lp, w_ent, temperature: float, with_entropy: bool):
    x = logits.detach().clone().requires_grad_(True)
    lp, ent = token_stats(x, target, temperature, with_entropy, impl=impl)
    loss = (lp * w_lp).sum() + ((ent * w_ent).sum() if with_entropy else 0.0)
    loss.backward()
    return lp.detach(), (ent.detach() if with_entropy else None), x.grad


@pytest.mark.parametrize("vocab,temperature,with_entropy", [(V, 0.8, True), (V, 1.0, False), (V // 2, 1.0, True)])
def test_fused_kernels_on_bf16_logits_equal_the_float64_reference_and_the_chunked_path(vocab, temperature,
                                                                                      with_entropy):
    g = torch.Generator(device="cuda").manual_seed(vocab)
    n = 333  # ragged: no multiple of anything
    logits = (torch.randn(n, vocab, device="cuda", generator=g) * 4).bfloat16()
    target = torch.randint(0, vocab, (n,), device="cuda", generator=g)
    w_lp, w_ent = torch.randn(n, device="cuda", generator=g), torch.randn(n, device="cuda", generator=g)
    lp, ent, grad = _run("triton", logits, target, w_lp, w_ent, temperature, with_entropy)
    c_lp, c_ent, c_grad = _run("torch", logits, target, w_lp, w_ent, temperature, with_entropy)
    up = logits.double().requires_grad_(True)
    r_lp, r_ent = reference_token_stats(up, target, temperature, torch.float64)
    ((r_lp.double() * w_lp).sum() + ((r_ent.double() * w_ent).sum() if with_entropy else 0.0)).backward()
    torch.testing.assert_close(lp, r_lp, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(lp, c_lp, rtol=1e-5, atol=5e-5)
    if with_entropy:
        torch.testing.assert_close(ent, r_ent, rtol=1e-5, atol=5e-5)
        torch.testing.assert_close(ent, c_ent, rtol=1e-5, atol=5e-5)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), up.grad.float(), rtol=1.6e-2, atol=1e-6)
    torch.testing.assert_close(grad.float(), c_grad.float(), rtol=1.6e-2, atol=1e-6)


def _timed(fn, reps: int = 5) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def test_fused_kernels_hold_no_tokens_by_vocab_float32_and_print_their_time_next_to_the_chunked_path():
    n = 8192
    logits = torch.randn(n, V, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    target = torch.randint(0, V, (n,), device="cuda")
    times, extra = {}, {}
    for impl in ("torch", "triton"):
        def step(impl=impl):
            lp, ent = token_stats(logits, target, 1.0, True, impl=impl)
            (lp.sum() + ent.sum()).backward()
            logits.grad = None
        times[impl] = _timed(step)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra[impl] = torch.cuda.max_memory_allocated() - base - n * V * 2  # beyond the bf16 gradient
    print(f"\nlog-prob + entropy forward and backward at {n} tokens x V {V} (bf16): chunked PyTorch "
          f"{times['torch']:.2f} ms, fused Triton {times['triton']:.2f} ms ({times['torch'] / times['triton']:.2f}x); "
          f"extra peak beyond the gradient: {extra['torch'] / 2**30:.2f} GiB vs {extra['triton'] / 2**30:.3f} GiB")
    assert extra["triton"] < 64 * n * 4 + (1 << 20)  # (tokens,) statistics only
    bytes_moved = 3 * n * V * 2  # one read forward, one read and one write backward
    print(f"fused: {bytes_moved / (times['triton'] * 1e-3) / 1e12:.2f} TB/s of logits and gradient moved")
