"""On a CUDA GPU the DLC model runs its memory stack on a second stream (models/dlc_qwen3.py). Running it there
changes where kernels run, never what they compute: the same seeded requests give the same tokens and log-probs
as the stacks run one after the other, in captured decode graphs and in eager decode.

Engines here run one at a time: SGLang's Engine.shutdown kills every child process of the calling process, so
shutting one engine down also kills any other engine of the process. This module owns its engines; run it on the
device machine after `tools/gpu_sglang.sh install`: `python -m pytest tests/sglang/test_gpu_overlap.py`.
"""

import os

import pytest
import torch

from megatron_rlvr.rollout.types import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


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


def test_overlapped_stacks_decode_exactly_like_serial_stacks(tmp_path, shapes, hf_models):
    from megatron_rlvr.rollout.sglang import build_model_dir

    path = build_model_dir(tmp_path / "dlc", *shapes, hf_models["policy"].state_dict(),
                           hf_models["memory"].state_dict(), dtype="bfloat16")
    prompts = _prompts(20, shapes[0].vocab_size)
    batches = [prompts[:12], prompts]  # 12 rows replay a captured decode graph (max 16), 20 rows decode eagerly
    sp = SamplingParams(max_new_tokens=16, temperature=1.0, lam=0.7, seed=11)
    want = _generate(path, *shapes, overlap=False, batches=batches, sampling=sp)
    got = _generate(path, *shapes, overlap=True, batches=batches, sampling=sp)
    for got_b, want_b in zip(got, want):
        for g, w in zip(got_b, want_b):
            assert g.response_ids == w.response_ids
            assert g.logprob_cal == pytest.approx(w.logprob_cal, abs=1e-6)
            assert g.logprob_policy == pytest.approx(w.logprob_policy, abs=1e-6)


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
                assert float(ref[t].max() - ref[t, y]) < 0.1
