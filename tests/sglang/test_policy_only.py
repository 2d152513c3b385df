"""With DLC off the engine serves the policy alone (`dlc_policy_only`): no memory stack is decoded, pushed or
cached, and the same sampler draws from the policy with the same per-token statistics, equal to the transformers
reference token for token."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megatron_rlvr.rollout.types import SamplingParams

from .conftest import hf_qwen3
from .reference import calibrated_logprobs, greedy_dlc

PROMPTS = [[5, 17, 99, 3], [42], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 11, 12, 13]]
# float32 exact matches: on a GPU sgl_kernel's rmsnorm has no fp32 kernel; the bf16 twin is in test_gpu_outputs.py
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="float32 SGLang runs on CPU only")


@pytest.fixture(scope="module")
def policy_only(tmp_path_factory, shapes, hf_models):
    from megatron_rlvr.rollout.sglang import SGLangEngine, build_model_dir
    from megatron_rlvr.weight_sync import TensorBuckets

    policy_shape, _ = shapes
    path = build_model_dir(tmp_path_factory.mktemp("policy_only"), policy_shape, None,
                           hf_models["policy"].state_dict(), dtype="float32")
    eng = SGLangEngine(str(path), policy_shape=policy_shape, memory_shape=None, device="cpu",
                       sglang={"log_level": "warning", "random_seed": 0, "port": 30700})
    yield eng, TensorBuckets(eng, {"policy": policy_shape}, bucket_bytes=1 << 20), path
    eng.shutdown()


def _assert_is_the_policy(gens, policy, memory, n):
    for prompt, g in zip(PROMPTS, gens):
        # lam = 0: pi_cal is the policy (the memory model only enters the reference multiplied by 0)
        toks, lp_cal, lp_pol, ent = greedy_dlc(policy, memory, prompt, 0.0, n)
        assert g.response_ids == toks
        assert max(abs(a - b) for a, b in zip(g.logprob_policy, lp_pol)) < 1e-5
        assert g.logprob_cal == pytest.approx(g.logprob_policy, abs=1e-6)
        assert max(abs(a - b) for a, b in zip(g.entropy_cal, ent)) < 1e-4


def test_the_folder_has_no_memory_stack(policy_only):
    _, _, path = policy_only
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["dlc_policy_only"] is True and "dlc_memory_config" not in cfg
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert f.keys() and all(k.startswith("policy.") for k in f.keys())


def test_greedy_decoding_is_the_policys_with_its_logprobs_and_entropy(policy_only, hf_models):
    engine, _, _ = policy_only
    gens = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0, lam=0.0))
    _assert_is_the_policy(gens, hf_models["policy"], hf_models["memory"], 8)


def test_sampled_tokens_follow_the_policy(policy_only, hf_models):
    engine, _, _ = policy_only
    prompt, n, temperature = [9, 30, 2, 77], 600, 1.3
    gens = engine.generate([prompt] * n, SamplingParams(max_new_tokens=1, temperature=temperature, lam=0.0, seed=5))
    _, pol = calibrated_logprobs(hf_models["policy"], hf_models["memory"], prompt, 0.0, temperature)
    for g in gens[:50]:
        assert abs(g.logprob_policy[0] - float(pol[g.response_ids[0]])) < 1e-5
    counts = torch.bincount(torch.tensor([g.response_ids[0] for g in gens]), minlength=pol.numel()).double()
    expected = pol.double().exp() * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    chi2 = float(((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum())
    dof = int(obs.numel()) - 1
    limit = dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3  # 99.9% quantile
    assert chi2 < limit, f"chi2={chi2:.1f} > {limit:.1f} (dof={dof})"


def test_a_policy_push_changes_outputs_as_the_reference_predicts_and_a_memory_push_is_refused(policy_only,
                                                                                              hf_models, shapes):
    engine, transport, _ = policy_only
    new_policy = hf_qwen3(shapes[0], 11)
    try:
        transport.push("policy", list(new_policy.state_dict().items()))
        gens = engine.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.0, lam=0.0))
        _assert_is_the_policy(gens, new_policy, hf_models["memory"], 6)
    finally:
        transport.push("policy", list(hf_models["policy"].state_dict().items()))
    with pytest.raises(Exception, match="policy-only"):
        transport.push("memory", list(hf_models["memory"].state_dict().items()))
