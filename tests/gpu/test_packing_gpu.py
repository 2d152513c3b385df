"""Packed sequences and chunked log-probs on CUDA, against float32/float64 references.

* chunked log-prob / entropy of bf16 logits at V = 151936 (ragged token count) == the float64 reference, and its
  gradient == the reference gradient to bf16 rounding;
* the log-prob phase's extra memory beyond its logits and their gradient is a few chunks, not (tokens, V) float32
  (printed next to an unchunked float32 log_softmax on the same logits);
* the tiny Qwen3 and Qwen3-0.6B's shape on CUDA: padded and packed (THD) log-probs both equal a float32 reference
  that runs every sequence alone without padding (float32 model), and stay within bf16 error of it (bf16 model);
  one SGD step of the tiny model packed == padded (loss, grad norm, weights).
"""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.update.logprobs import DEFAULT_CHUNK_ELEMENTS, reference_token_stats, token_stats
from tests.helpers.dist import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine; "
                       "see tests/gpu/README.md)"),
]
V = 151936


def test_chunked_bf16_log_probs_at_the_qwen3_vocabulary_equal_the_float64_reference():
    g = torch.Generator(device="cuda").manual_seed(0)
    n = 333
    logits = (torch.randn(n, V, device="cuda", generator=g) * 4).bfloat16().requires_grad_(True)
    target = torch.randint(0, V, (n,), device="cuda", generator=g)
    w_lp, w_ent = torch.randn(n, device="cuda", generator=g), torch.randn(n, device="cuda", generator=g)
    lp, ent = token_stats(logits, target, 0.8, True, chunk_tokens=64)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    ours = logits.grad.clone()
    up = logits.detach().double().requires_grad_(True)
    r_lp, r_ent = reference_token_stats(up, target, 0.8, torch.float64)
    ((r_lp.double() * w_lp).sum() + (r_ent.double() * w_ent).sum()).backward()
    torch.testing.assert_close(lp, r_lp, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(ent, r_ent, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(ours.float(), up.grad.float(), rtol=1.6e-2, atol=1e-6)


def _extra_peak(fn, logits) -> int:
    """Peak bytes allocated by fn() (forward + backward) beyond the logits and their gradient."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn().sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - logits.grad.numel() * logits.grad.element_size()
    logits.grad = None
    return extra


def test_log_prob_memory_beyond_logits_and_gradient_is_a_few_chunks_not_tokens_by_vocab():
    n = 8192
    logits = torch.randn(n, V, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    target = torch.randint(0, V, (n,), device="cuda")
    full_fp32 = n * V * 4
    ours = _extra_peak(lambda: token_stats(logits, target, 1.0, False)[0], logits)
    unchunked = _extra_peak(
        lambda: torch.log_softmax(logits.float(), -1).gather(-1, target[:, None]).squeeze(-1), logits)
    print(f"\nextra peak beyond bf16 logits + grad at {n} tokens x V {V}: chunked {ours / 2**30:.2f} GiB, "
          f"unchunked float32 log_softmax {unchunked / 2**30:.2f} GiB "
          f"(tokens x V float32 = {full_fp32 / 2**30:.2f} GiB)")
    assert ours <= 6 * DEFAULT_CHUNK_ELEMENTS * 4 + 64 * n * 4, ours
    assert ours < full_fp32 / 2 < unchunked


def _model_worker(preset: str, lengths: list[int], train: bool) -> dict:
    from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    ctx = init_distributed({"policy": ParallelConfig()})
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor(lengths)
    n, L = len(lengths), int(lengths.max())
    pos = torch.arange(L).expand(n, L)
    tokens = torch.randint(1, 128, (n, L), generator=g)  # ids < 128 exist in every preset's vocabulary
    tokens[pos >= lengths[:, None]] = 0
    sgd = OptimConfig(optimizer="sgd", lr=0.5, sgd_momentum=0.0, clip_grad=0.0)

    def build(dtype: str):
        return TrainableModel("policy", ModelConfig(preset=preset, dtype=dtype, init_seed=5), sgd, ctx)

    m32 = build("float32")
    ref = torch.zeros(n, L)
    with torch.no_grad():
        for i, ln in enumerate(lengths.tolist()):  # every sequence alone: no padding, no packing
            t = tokens[i : i + 1, :ln].to(ctx.device)
            z = m32.model_chunks[0](t, torch.arange(ln, device=ctx.device)[None], None)[0].double()
            lp = torch.log_softmax(z, -1)[:-1].gather(-1, t[0, 1:, None]).squeeze(-1)
            ref[i, 1:ln] = lp.float().cpu()
    out = {"ref": ref, "lengths": lengths}
    out["padded32"] = m32.forward_logprobs(tokens, 1.0, 3)[0]
    out["packed32"] = m32.forward_logprobs(tokens, 1.0, 3, lengths=lengths)[0]
    m16 = build("bfloat16")
    with torch.no_grad():
        for p16, p32 in zip(m16.parameters(), m32.parameters()):
            p16.copy_(p32)
    out["padded16"] = m16.forward_logprobs(tokens, 1.0, 3)[0]
    out["packed16"] = m16.forward_logprobs(tokens, 1.0, 3, lengths=lengths)[0]
    del m16
    if not train:
        ctx.destroy()
        return out

    def loss_fn(lp, ent, mb):
        return -(lp * mb["valid"]).sum() / 200.0, {}  # real tokens only: padded rows predict pads past their end

    valid = pos < lengths[:, None]

    steps = {}
    for name, with_len in (("padded", False), ("packed", True)):
        m = build("float32")
        mbs = [{"tokens": tokens[i : i + 3], "valid": valid[i : i + 3],
                **({"lengths": lengths[i : i + 3]} if with_len else {})}
               for i in range(0, n, 3)]
        stats = m.train_step(mbs, loss_fn)
        steps[name] = (stats["loss"], stats["grad_norm"], [p.detach().cpu() for p in m.parameters()])
    out["steps"] = steps
    ctx.destroy()
    return out


def _check_logprobs(out: dict, fp32_tol: float, bf16_mean: float, bf16_max: float) -> None:
    v = torch.arange(out["ref"].shape[1]).expand_as(out["ref"]) < out["lengths"][:, None]
    ref = out["ref"][v]
    for name in ("padded32", "packed32"):
        torch.testing.assert_close(out[name][v], ref, rtol=fp32_tol, atol=fp32_tol, msg=name)
    err = {name: (out[name][v] - ref).abs() for name in ("padded16", "packed16")}
    gap = (out["packed16"][v] - out["padded16"][v]).abs()
    print(f"\nbf16 vs float32 reference: padded mean {err['padded16'].mean():.4f} max {err['padded16'].max():.4f}; "
          f"packed mean {err['packed16'].mean():.4f} max {err['packed16'].max():.4f}; packed-padded mean "
          f"{gap.mean():.4f}; float32 packed max {(out['packed32'][v] - ref).abs().max():.2e}")
    for name, e in err.items():
        assert e.mean() < bf16_mean and e.max() < bf16_max, name


def test_packed_and_padded_log_probs_on_cuda_equal_a_float32_reference_and_train_alike():
    lengths = [64, 3, 17, 1, 40, 64, 9, 33]
    (out,) = run_distributed(_model_worker, world_size=1, args=("tiny", lengths, True), timeout=600)
    _check_logprobs(out, 1e-4, 0.02, 0.25)
    (l_pad, g_pad, p_pad), (l_pack, g_pack, p_pack) = out["steps"]["padded"], out["steps"]["packed"]
    assert l_pack == pytest.approx(l_pad, rel=1e-4) and g_pack == pytest.approx(g_pad, rel=1e-4)
    for a, b in zip(p_pack, p_pad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_packed_log_probs_of_a_real_qwen3_shape_match_the_float32_reference():
    # Qwen3-0.6B's shape (28 layers, head_dim 128, 16 query / 8 KV heads, V = 151936), random weights.
    lengths = [1024, 3, 517, 1, 250, 777]
    (out,) = run_distributed(_model_worker, world_size=1, args=("qwen3-0.6b", lengths, False), timeout=600)
    _check_logprobs(out, 5e-4, 0.05, 0.5)
