"""Megatron-Core Qwen3 on CUDA against transformers in float32 (TF32 off): forward logits and gradients.

For every GQA ratio the Qwen3 family uses (query heads / KV heads = 1, 2, 4, 5) with head_dim 32 and 128 (two layers
of real Qwen3 widths: 0.6B, 4B and 14B, plus an MHA variant), the same weights go into transformers'
Qwen3ForCausalLM and, through the project's name map, into the trainer's Megatron model (`TrainableModel`, the path
training uses). Then:
- the full logits of a batch must agree (max |diff| relative to the logits' scale);
- one SGD step with lr = 1 through the trainer's own cross-entropy step (Megatron DDP, gradient finalisation) must
  move every weight by minus transformers' gradient of the same loss.
TP = 1 on one GPU; TP = 2 needs two GPUs (skipped with its reason otherwise). The same worker runs on CPU/gloo
in tests/test_reference_cpu.py at tiny shapes, so the harness itself is checked in CI.
Set MEGATRON_RLVR_TE=1 to run the Transformer-Engine layer spec instead of the local one (needs TE importable).
"""

from __future__ import annotations

import os

import pytest
import torch

from megatron_rlvr.qwen3.shapes import Qwen3Shape
from tests.helpers.dist import run_distributed

# name -> (shape, std of the random weights). Larger std on the narrow models keeps their logits far from uniform.
SHAPES = {
    "gqa1_hd32": (Qwen3Shape(128, 2, 4, 4, 384, head_dim=32, vocab_size=512), 0.05),
    "gqa2_hd32": (Qwen3Shape(128, 2, 4, 2, 384, head_dim=32, vocab_size=512, tie_word_embeddings=True), 0.05),
    "gqa4_hd32": (Qwen3Shape(256, 2, 8, 2, 768, head_dim=32, vocab_size=512), 0.05),
    "gqa5_hd32": (Qwen3Shape(320, 2, 10, 2, 960, head_dim=32, vocab_size=512), 0.05),
    "gqa1_hd128": (Qwen3Shape(1024, 2, 8, 8, 3072, vocab_size=4096), 0.02),
    "gqa2_hd128_0p6b": (Qwen3Shape(1024, 2, 16, 8, 3072, vocab_size=4096, tie_word_embeddings=True), 0.02),
    "gqa4_hd128_4b": (Qwen3Shape(2560, 2, 32, 8, 9728, vocab_size=4096, tie_word_embeddings=True), 0.02),
    "gqa5_hd128_14b": (Qwen3Shape(5120, 2, 40, 8, 17408, vocab_size=4096), 0.02),
}
LOGITS_RTOL = 1e-4  # max |diff| / max |logit|, float32 without TF32 (measured ~1e-6 on CPU)
GRAD_RTOL = 1e-4  # ||g_megatron - g_hf|| / ||g_hf|| per tensor


def hf_model(shape: Qwen3Shape, std: float, seed: int = 0):
    from transformers import Qwen3ForCausalLM

    from megatron_rlvr.qwen3.hf import hf_config

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(hf_config(shape, torch.float32)).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
            else:  # norms: not all ones, so a transposed or dropped norm weight shows
                p.uniform_(0.8, 1.2)
    return model


def compare_all_worker(names: list, tp: int, transformer_impl: str = "local") -> dict:
    """compare_worker for several shapes in one process and one distributed context: each test process spends ~25 s
    on a GPU host starting CUDA and the process group, which dominated the per-shape runs (33-69 s each, 5.3 minutes
    of an 1800 s device session for 8 shapes). A shape that fails reports its traceback; the others still run."""
    import traceback

    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.config import ParallelConfig

    ctx = init_distributed({"policy": ParallelConfig(tp=tp)})
    out = {}
    try:
        for name in names:
            try:
                out[name] = compare_worker(name, tp, transformer_impl, ctx=ctx)
            except Exception:  # noqa: BLE001 - reported per shape by the test that reads it
                out[name] = {"error": traceback.format_exc()[-3000:]}
    finally:
        ctx.destroy()
    return out


def compare_worker(name: str, tp: int, transformer_impl: str = "local", ctx=None) -> dict:
    """On each rank: transformers vs the trainer's Megatron model (layout tp), logits and SGD-step deltas.
    ``ctx``: a distributed context of layout tp to reuse (then it stays up); None: one is made and destroyed."""
    from megatron.core import tensor_parallel

    from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
    from megatron_rlvr.qwen3.live import export_hf_tensors, load_hf_tensors
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.update import cross_entropy_step

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shape, std = SHAPES[name]
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    ref = hf_model(shape, std)
    hf_state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    if shape.tie_word_embeddings:
        hf_state.pop("lm_head.weight", None)

    def get_hf(hf_name, index=None):
        t = hf_state[hf_name]
        return t if index is None else t[index]

    par = ParallelConfig(tp=tp)
    own_ctx = ctx is None
    if own_ctx:
        ctx = init_distributed({"policy": par})
    cfg = ModelConfig(preset="tiny", parallel=par, dtype="float32", transformer_impl=transformer_impl)
    optim = OptimConfig(optimizer="sgd", lr=1.0, clip_grad=0.0)
    model = TrainableModel("policy", cfg, optim, ctx, shape=shape)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, shape.vocab_size, (3, 37), generator=g)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, :5] = False  # a "prompt" that is not trained on
    mask[2, 30:] = False  # and a shorter response
    with ctx.layout("policy"):
        load_hf_tensors(model.model_chunks, shape, get_hf)
        chunk = model.model_chunks[0].eval()
        pos = torch.arange(tokens.shape[1], device=device).expand(tokens.shape[0], -1)
        with torch.no_grad():
            local = chunk(tokens.to(device), pos, None)
            mlogits = tensor_parallel.gather_from_tensor_model_parallel_region(local).float().cpu()
        before = {k: v.detach().cpu().clone() for k, v in export_hf_tensors(model.model_chunks, shape)}
    loss_m, _ = cross_entropy_step(model, tokens, mask, micro_batch_size=2)
    with ctx.layout("policy"):
        after = {k: v.detach().cpu().clone() for k, v in export_hf_tensors(model.model_chunks, shape)}

    ref = ref.to(device)
    out = ref(tokens.to(device)).logits.float()
    logp = torch.log_softmax(out[:, :-1], dim=-1).gather(-1, tokens[:, 1:, None].to(device)).squeeze(-1)
    m = mask[:, 1:].to(device)
    loss_h = -(logp * m).sum() / m.sum()
    loss_h.backward()
    hf_logits = out.detach().cpu()
    grads = {k: p.grad.detach().cpu() for k, p in ref.named_parameters() if p.grad is not None}
    if own_ctx:
        ctx.destroy()

    grad_err = {}
    for k, g_h in grads.items():
        if k not in before:
            continue  # lm_head of a tied model: its gradient is in the embedding's
        delta = before[k] - after[k]  # lr = 1, plain SGD: the applied gradient
        grad_err[k] = float((delta - g_h).norm() / g_h.norm().clamp_min(1e-30))
    missing = sorted(set(grads) - set(before) - ({"lm_head.weight"} if shape.tie_word_embeddings else set()))
    return {
        "logits_rel": float((mlogits - hf_logits).abs().max() / hf_logits.abs().max()),
        "logits_scale": float(hf_logits.std()),
        "loss": (float(loss_m), float(loss_h)),
        "grad_err": grad_err,
        "missing": missing,
        "device": str(device),
    }


def assert_matches(res: dict) -> None:
    assert not res["missing"], f"weights without a Megatron counterpart: {res['missing']}"
    assert res["logits_scale"] > 0.1, "near-uniform logits would hide errors; raise the weights' std"
    assert res["logits_rel"] <= LOGITS_RTOL, res["logits_rel"]
    lm, lh = res["loss"]
    assert abs(lm - lh) <= 1e-5 * max(1.0, abs(lh)), res["loss"]
    worst = max(res["grad_err"], key=res["grad_err"].get)
    assert res["grad_err"][worst] <= GRAD_RTOL, (worst, res["grad_err"][worst])
    assert len(res["grad_err"]) >= 10  # embeddings, every layer's q/k/v/o/gate/up/down and norms, final norm


IMPL = "transformer_engine" if os.environ.get("MEGATRON_RLVR_TE") == "1" else "local"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU twin: test_reference_cpu.py)")


TP2_SHAPES = ["gqa1_hd32", "gqa5_hd32", "gqa4_hd128_4b", "gqa5_hd128_14b"]


@pytest.fixture(scope="module")
def tp1_results() -> dict:
    """Every shape at TP = 1, in one GPU process (see compare_all_worker)."""
    return run_distributed(compare_all_worker, 1, args=(list(SHAPES), 1, IMPL), timeout=1200)[0]


@pytest.fixture(scope="module")
def tp2_results() -> list:
    return run_distributed(compare_all_worker, 2, args=(TP2_SHAPES, 2, IMPL), timeout=1200)


def _checked(res: dict) -> dict:
    assert "error" not in res, res["error"]
    return res


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", list(SHAPES))
def test_megatron_on_cuda_matches_transformers_float32_logits_and_gradients_at_tp1(name, tp1_results):
    res = _checked(tp1_results[name])
    assert res["device"] == "cuda"
    assert_matches(res)


@pytest.mark.gpu
@pytest.mark.multigpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="TP=2 over NCCL needs 2 CUDA GPUs (one is lent: nvidia-h200-x2 runs this part)")
@pytest.mark.parametrize("name", TP2_SHAPES)
def test_megatron_on_cuda_matches_transformers_float32_logits_and_gradients_at_tp2(name, tp2_results):
    for rank_results in tp2_results:
        assert_matches(_checked(rank_results[name]))
