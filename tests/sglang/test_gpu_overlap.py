"""On a CUDA GPU every decoded token's log-probs are those of the two models, in captured decode graphs and in eager
decode, whether the memory stack runs after the policy or on a second stream (models/dlc_qwen3.py). Running it
there changes where kernels run, never what they compute: the same seeded requests give the same tokens and
log-probs as the stacks run one after the other.

Regression (found on an H100, 2026-11-23): in captured decode graphs SGLang's logits processors write into one
shared buffer per vocab size, so the memory's logits overwrote the policy's (serial) or raced with them
(overlapped). Eager decode has no such buffer and was right. Reproducibility and overlap comparisons alone cannot
see the serial case, which is wrong the same way every time: hence the float32 reference below.

Two model pairs, because they take different SGLang code paths:
- `head_dim_128`: the head_dim of every published Qwen3 size, grouped-query attention in both stacks. SGLang
  normalises q/k with its fused in-place JIT kernel and never uses a helper stream.
- `tiny_head_dim_32`: the CPU suite's tiny shapes. No JIT q/k-norm kernel exists for head_dim 32, so during CUDA-
  graph capture each layer normalises k on a helper stream; the memory model has one KV head per query head, so
  its decode attention is SGLang's non-grouped triton kernel.
Each pair starts three engines: serial twice (the baseline: decoding must be reproducible across restarts, else
the overlap comparison means nothing), then overlapped. Failures name the decode mode, row, first differing token
and the log-prob gap before it. Serial and overlapped generations are also checked token by token against the
same weights (rounded to bf16) evaluated in float32 with transformers.

Engines run one at a time: SGLang's Engine.shutdown kills every child process of the calling process. Run on the
device machine after `tools/gpu_sglang.sh install` (about 70 s per engine on an H100):
`python -m pytest tests/sglang/test_gpu_overlap.py` (`-k head_dim_128` for one pair).
"""

import os

import pytest
import torch

from megatron_rlvr.qwen3.shapes import Qwen3Shape, get_preset
from megatron_rlvr.rollout.types import SamplingParams

from .conftest import hf_qwen3

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

PAIRS = {
    # (policy, memory): hidden, layers, q heads, KV heads, FFN
    "head_dim_128": (Qwen3Shape(256, 2, 4, 2, 512, head_dim=128, vocab_size=128, max_position_embeddings=256),
                     Qwen3Shape(128, 2, 4, 2, 256, head_dim=128, vocab_size=128, max_position_embeddings=256)),
    "tiny_head_dim_32": (get_preset("tiny"), get_preset("tiny-mem")),  # the CPU suite's shapes
}
GRAPH_ROWS, EAGER_ROWS = 12, 20  # decode graphs are captured up to 16 rows; 20 rows decode eagerly
SAMPLING = SamplingParams(max_new_tokens=16, temperature=1.0, lam=0.7, seed=11)
# bf16 engine vs float32 reference on the bf16-rounded weights. transformers in bf16 vs float32 on these pairs
# differs by at most 0.09 (mean 0.011) in any log-prob; the buffer bug above gave gaps of 0.9-1.3 on average.
MAX_LOGPROB_GAP, MEAN_LOGPROB_GAP = 0.25, 0.04


def _generate(path, policy_shape, memory_shape, overlap: bool, batches, sampling):
    """Start a bf16 engine, run each prompt batch, shut it down; returns the generations per batch."""
    from megatron_rlvr.rollout.sglang import SGLangEngine
    from megatron_rlvr.rollout.sglang.models.dlc_qwen3 import OVERLAP_ENV

    os.environ[OVERLAP_ENV] = "1" if overlap else "0"  # read by SGLang's scheduler process when it starts
    try:
        eng = SGLangEngine(str(path), policy_shape=policy_shape, memory_shape=memory_shape, device="cuda",
                           placement="dedicated", sglang=dict(dtype="bfloat16", attention_backend="triton",
                                                              mem_fraction_static=0.2, log_level="warning",
                                                              cuda_graph_max_bs_decode=16, random_seed=0))
    finally:
        os.environ.pop(OVERLAP_ENV, None)
    try:
        return [eng.generate(prompts, sampling) for prompts in batches]
    finally:
        eng.shutdown()


def _prompts(n: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, vocab, (n, 6), generator=g).tolist()


def _differences(got, want) -> list[str]:
    """One line per row whose tokens or log-probs differ: first differing token, largest log-prob gap before it."""
    lines = []
    for row, (g, w) in enumerate(zip(got, want)):
        first = next((t for t, (a, b) in enumerate(zip(g.response_ids, w.response_ids)) if a != b), None)
        upto = len(g.response_ids) if first is None else first
        gap_cal = max((abs(a - b) for a, b in zip(g.logprob_cal[:upto], w.logprob_cal[:upto])), default=0.0)
        gap_pol = max((abs(a - b) for a, b in zip(g.logprob_policy[:upto], w.logprob_policy[:upto])), default=0.0)
        if first is not None or gap_cal > 1e-6 or gap_pol > 1e-6:
            lines.append(f"row {row}: first differing token {first}, max |d log pi_cal| {gap_cal:.3g} and "
                         f"|d log pi_policy| {gap_pol:.3g} before it")
    return lines


@pytest.fixture(scope="module", params=list(PAIRS))
def runs(request, tmp_path_factory):
    from megatron_rlvr.rollout.sglang import build_model_dir

    policy_shape, memory_shape = PAIRS[request.param]
    path = build_model_dir(tmp_path_factory.mktemp(request.param), policy_shape, memory_shape,
                           hf_qwen3(policy_shape, 1).state_dict(), hf_qwen3(memory_shape, 2).state_dict(),
                           dtype="bfloat16")
    prompts = _prompts(EAGER_ROWS, policy_shape.vocab_size)
    batches = [prompts[:GRAPH_ROWS], prompts]
    runs = {name: _generate(path, policy_shape, memory_shape, overlap, batches, SAMPLING)
            for name, overlap in (("serial", False), ("serial_again", False), ("overlapped", True))}
    runs["reference"] = (_bf16_rounded(hf_qwen3(policy_shape, 1)), _bf16_rounded(hf_qwen3(memory_shape, 2)))
    return runs


def _bf16_rounded(model):
    """The engine's weights (bf16) in a float32 model: the reference then differs only in activation precision."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def _reference_gaps(gens, policy, memory, lam: float) -> tuple[list[str], float, float]:
    """Teacher-force each generation through float32 transformers; |engine - reference| of log pi_cal and
    log pi_policy per token (temperature 1). Returns one line per row over MAX_LOGPROB_GAP, the max and the mean."""
    lines, gaps = [], []
    with torch.no_grad():
        for row, g in enumerate(gens):
            seq = torch.tensor([g.prompt_ids + g.response_ids[:-1]])
            start = len(g.prompt_ids) - 1
            zp = policy(seq).logits[0, start:].float()
            zm = memory(seq).logits[0, start:].float()
            ref_pol = torch.log_softmax(zp, dim=-1)
            ref_cal = torch.log_softmax(zp - lam * zm, dim=-1)
            tok = torch.tensor(g.response_ids)
            d_cal = (torch.tensor(g.logprob_cal) - ref_cal.gather(1, tok[:, None])[:, 0]).abs()
            d_pol = (torch.tensor(g.logprob_policy) - ref_pol.gather(1, tok[:, None])[:, 0]).abs()
            gaps += [d_cal, d_pol]
            worst = torch.maximum(d_cal, d_pol)
            if float(worst.max()) > MAX_LOGPROB_GAP:
                t = int(worst.argmax())
                lines.append(f"row {row}: token {t}: |d log pi_cal| {float(d_cal[t]):.3g}, "
                             f"|d log pi_policy| {float(d_pol[t]):.3g}")
    flat = torch.cat(gaps)
    return lines, float(flat.max()), float(flat.mean())


@pytest.mark.parametrize("mode, batch", [("captured-graph", 0), ("eager", 1)])
def test_serial_decoding_is_reproducible_across_engine_restarts(runs, mode, batch):
    diff = _differences(runs["serial_again"][batch], runs["serial"][batch])
    assert not diff, f"{mode} decode, two serial engines:\n" + "\n".join(diff)


@pytest.mark.parametrize("mode, batch", [("captured-graph", 0), ("eager", 1)])
def test_overlapped_stacks_decode_exactly_like_serial_stacks(runs, mode, batch):
    diff = _differences(runs["overlapped"][batch], runs["serial"][batch])
    assert not diff, f"{mode} decode, overlapped vs serial:\n" + "\n".join(diff)


@pytest.mark.parametrize("engine", ["serial", "overlapped"])
@pytest.mark.parametrize("mode, batch", [("captured-graph", 0), ("eager", 1)])
def test_every_decoded_token_has_the_log_probs_of_a_float32_reference(runs, engine, mode, batch):
    policy, memory = runs["reference"]
    lines, worst, mean = _reference_gaps(runs[engine][batch], policy, memory, SAMPLING.lam)
    assert not lines and mean < MEAN_LOGPROB_GAP, (
        f"{engine} engine, {mode} decode vs float32 reference: max gap {worst:.3g}, mean {mean:.3g}\n"
        + "\n".join(lines))


def test_a_memory_with_more_query_heads_than_the_policy_decodes_correctly(tmp_path, shapes, hf_models):
    # The triton backend sizes its split-KV scratch by the policy's query heads; the memory stack gets its own,
    # sized by its heads (tiny has 4, tiny-mem 2: here the memory is the wider one).
    from megatron_rlvr.rollout.sglang import build_model_dir

    narrow, wide = shapes[1], shapes[0]
    path = build_model_dir(tmp_path / "wide_memory", narrow, wide, hf_models["memory"].state_dict(),
                           hf_models["policy"].state_dict(), dtype="bfloat16")
    lam = 0.5
    prompts = _prompts(8, narrow.vocab_size)
    (gens,) = _generate(path, narrow, wide, overlap=True, batches=[prompts],
                        sampling=SamplingParams(max_new_tokens=6, temperature=0.0, lam=lam, seed=1))
    with torch.no_grad():
        for i, g in enumerate(gens):
            seq = torch.tensor([prompts[i] + g.response_ids[:-1]])
            zp = hf_models["memory"](seq).logits[0, len(prompts[i]) - 1:].float()  # here the policy
            zm = hf_models["policy"](seq).logits[0, len(prompts[i]) - 1:].float()  # here the memory
            ref = torch.log_softmax(zp - lam * zm, dim=-1)
            for t, y in enumerate(g.response_ids):
                # bf16 greedy may pick a near-tie differently from fp32; the pick must still be near the top.
                assert abs(g.logprob_cal[t] - float(ref[t, y])) < 0.1
                assert abs(g.logprob_policy[t] - float(torch.log_softmax(zp[t], -1)[y])) < 0.1
                assert float(ref[t].max() - ref[t, y]) < 0.1
