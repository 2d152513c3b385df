"""The DLC engine on a CUDA GPU in bf16: the per-token log-probs that the sampler hands back asynchronously (pinned
buffers, no device sync) are the sampled tokens' own values, never stale or uninitialised memory.

Run on the device machine after `tools/gpu_sglang.sh install`: `python -m pytest tests/sglang/test_gpu_outputs.py`.
(The float32 exact-match tests of this folder cannot run there: sgl_kernel's CUDA rmsnorm has no fp32 kernel.)
"""

import math

import pytest
import torch

from megatron_rlvr.rollout.types import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


@pytest.fixture(scope="module")
def bf16_engine(tmp_path_factory, shapes, hf_models):
    from megatron_rlvr.rollout.sglang import SGLangEngine, build_model_dir

    policy_shape, memory_shape = shapes
    path = build_model_dir(tmp_path_factory.mktemp("dlc_bf16"), policy_shape, memory_shape,
                           hf_models["policy"].state_dict(), hf_models["memory"].state_dict(), dtype="bfloat16")
    eng = SGLangEngine(str(path), policy_shape=policy_shape, memory_shape=memory_shape, device="cuda",
                       placement="dedicated", sglang=dict(dtype="bfloat16", attention_backend="triton",
                                                          mem_fraction_static=0.3, log_level="warning",
                                                          cuda_graph_max_bs_decode=16, random_seed=0))
    yield eng
    eng.shutdown()


def _prompts(n: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, vocab, (n, 6), generator=g).tolist()


def test_at_lambda_zero_both_returned_logprobs_are_equal_and_valid_for_every_token(bf16_engine, shapes):
    prompts = _prompts(12, shapes[0].vocab_size)
    gens = bf16_engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=1.0, lam=0.0, seed=3))
    for g in gens:
        assert len(g.response_ids) == 24
        # lam = 0: pi_cal is the policy. The kernel sums the two log-sum-exps separately, which may round
        # differently (4.8e-7 seen on an H200); stale or uninitialised host memory would be off by far more.
        assert g.logprob_cal == pytest.approx(g.logprob_policy, abs=1e-5)
        assert all(math.isfinite(x) and x <= 0.0 for x in g.logprob_cal)
        assert all(math.isfinite(h) and h >= 0.0 for h in g.entropy_cal)


def test_first_token_logprobs_match_a_float32_reference_to_bf16_precision(bf16_engine, shapes, hf_models):
    lam = 0.5
    prompts = _prompts(8, shapes[0].vocab_size)
    gens = bf16_engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=1.0, lam=lam, seed=4))
    ids = torch.tensor(prompts)
    with torch.no_grad():
        zp = hf_models["policy"](ids).logits[:, -1].float()
        zm = hf_models["memory"](ids).logits[:, -1].float()
    ref_cal = torch.log_softmax(zp - lam * zm, dim=-1)
    ref_pol = torch.log_softmax(zp, dim=-1)
    for i, g in enumerate(gens):
        y = g.response_ids[0]
        # bf16 weights and activations: a few hundredths of a nat; garbage memory would be far off.
        assert abs(g.logprob_cal[0] - float(ref_cal[i, y])) < 0.1
        assert abs(g.logprob_policy[0] - float(ref_pol[i, y])) < 0.1
    assert any(g.logprob_cal != g.logprob_policy for g in gens)  # lambda reaches the engine's sampler



@pytest.fixture(scope="module")
def bf16_policy_only(tmp_path_factory, shapes, hf_models):
    from megatron_rlvr.rollout.sglang import SGLangEngine, build_model_dir

    path = build_model_dir(tmp_path_factory.mktemp("policy_only_bf16"), shapes[0], None,
                           hf_models["policy"].state_dict(), dtype="bfloat16")
    eng = SGLangEngine(str(path), policy_shape=shapes[0], memory_shape=None, device="cuda", placement="dedicated",
                       sglang=dict(dtype="bfloat16", attention_backend="triton", mem_fraction_static=0.2,
                                   log_level="warning", cuda_graph_max_bs_decode=16, random_seed=0, port=30700))
    yield eng
    eng.shutdown()


def test_the_policy_only_engine_samples_the_policy_with_its_float32_logprobs(bf16_policy_only, shapes, hf_models):
    """dlc.enabled=false: no memory stack; the same sampler, in captured decode graphs, reports the policy's
    log-probs of the tokens it draws (both returned log-probs are the policy's)."""
    prompts = _prompts(8, shapes[0].vocab_size)
    gens = bf16_policy_only.generate(prompts, SamplingParams(max_new_tokens=24, temperature=1.0, lam=0.0, seed=4))
    ids = torch.tensor(prompts)
    with torch.no_grad():
        ref = torch.log_softmax(hf_models["policy"](ids).logits[:, -1].float(), dim=-1)
    for i, g in enumerate(gens):
        assert len(g.response_ids) == 24
        assert abs(g.logprob_policy[0] - float(ref[i, g.response_ids[0]])) < 0.1
        assert g.logprob_cal == pytest.approx(g.logprob_policy, abs=1e-5)
        assert all(math.isfinite(x) and x <= 0.0 for x in g.logprob_policy)
