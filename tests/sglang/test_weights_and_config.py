"""The DLC model folder and the HF-name weight mapping (no engine needed)."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_rlvr.qwen3.names import hf_names as hf_qwen3_names
from megatron_rlvr.qwen3.shapes import get_preset
from megatron_rlvr.rollout.sglang.engine import request_seed, sglang_sampling_params, to_generation
from megatron_rlvr.rollout.sglang.model_dir import build_model_dir, dlc_config_dict
from megatron_rlvr.rollout.sglang.protocol import ARCHITECTURE, MEMORY_CONFIG_KEY
from megatron_rlvr.rollout.sglang.protocol import dlc_param_names as prefixed
from megatron_rlvr.rollout.types import SamplingParams


def test_config_is_the_policy_config_with_the_memory_config_nested():
    p, m = get_preset("qwen3-1.7b"), get_preset("qwen3-0.6b")
    cfg = dlc_config_dict(p, m)
    assert cfg["architectures"] == [ARCHITECTURE]
    assert cfg["hidden_size"] == 2048 and cfg["num_hidden_layers"] == 28
    assert cfg[MEMORY_CONFIG_KEY]["hidden_size"] == 1024
    assert cfg[MEMORY_CONFIG_KEY]["vocab_size"] == cfg["vocab_size"] == 151936


@pytest.mark.parametrize("field,value,match", [
    ("vocab_size", 64, "vocab_size"), ("head_dim", 16, "head_dim"), ("num_key_value_heads", 1, "KV-head"),
])
def test_incompatible_memory_shapes_are_rejected_with_the_reason(field, value, match):
    p = get_preset("tiny")
    m = get_preset("tiny-mem", **{field: value})
    with pytest.raises(ValueError, match=match):
        dlc_config_dict(p, m)


def test_model_dir_holds_prefixed_hf_weights_and_skips_tied_heads(tmp_path):
    from safetensors.torch import load_file

    p, m = get_preset("tiny"), get_preset("tiny-tied", hidden_size=64, num_attention_heads=2,
                                          intermediate_size=96)
    ps = {n: torch.full((2,), float(i)) for i, n in enumerate(hf_qwen3_names(p))}
    ms = {n: torch.ones(1) for n in hf_qwen3_names(m)} | {"lm_head.weight": torch.ones(1)}
    out = build_model_dir(tmp_path, p, m, ps, ms, dtype="float32")
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == {f"policy.{n}" for n in ps} | {f"memory.{n}" for n in hf_qwen3_names(m)}
    assert "memory.lm_head.weight" not in saved  # tied: the head is the embedding
    assert torch.equal(saved["policy.lm_head.weight"], ps["lm_head.weight"])
    assert json.loads((out / "config.json").read_text())[MEMORY_CONFIG_KEY]["tie_word_embeddings"] is True


def test_bad_names_layers_and_models_are_rejected():
    shape = get_preset("tiny")
    with pytest.raises(ValueError, match="not a Hugging Face Qwen3"):
        list(prefixed("policy", [("model.layers.2.mlp.up_proj.weight", torch.zeros(1))], shape))  # 2 layers
    with pytest.raises(ValueError, match="not a Hugging Face Qwen3"):
        list(prefixed("policy", [("decoder.layers.0.mlp.fc1.weight", torch.zeros(1))], shape))
    with pytest.raises(ValueError, match="model must be one of"):
        list(prefixed("value", [("model.norm.weight", torch.zeros(1))], shape))


def test_sampling_params_map_to_sglang_with_dlc_options_per_request():
    sp = SamplingParams(max_new_tokens=7, temperature=0.0, top_k=0, top_p=0.9, lam=0.3, tau=0.1,
                        stop_token_ids=(2,))
    d = sglang_sampling_params(sp, request_seed(4, 1))
    assert d["top_k"] == -1 and d["max_new_tokens"] == 7 and d["stop_token_ids"] == [2]
    assert d["custom_params"] == {"dlc_lam": 0.3, "dlc_tau": 0.1, "dlc_seed": request_seed(4, 1)}
    assert request_seed(4, 1) != request_seed(4, 2) != request_seed(5, 1)


def test_aborted_or_non_dlc_outputs_raise_instead_of_returning_wrong_records():
    from megatron_rlvr.rollout.sglang.engine import SGLangEngineError

    meta = {"finish_reason": {"type": "abort", "message": "oom"}}
    with pytest.raises(SGLangEngineError, match="abort"):
        to_generation([1], {"output_ids": [3], "meta_info": meta})
    with pytest.raises(SGLangEngineError, match="not serving the DLC model"):
        to_generation([1], {"output_ids": [3], "meta_info": {"finish_reason": {"type": "length"}}})
    # Over HTTP the per-token records arrive as JSON lists: (log pi_cal, log pi_policy, entropy).
    g = to_generation([1], {"output_ids": [3, 4], "meta_info": {
        "finish_reason": {"type": "length"}, "dlc_token_stats": [[-1.0, -1.5, 2.0], [-2.0, -2.5, 1.0]]}})
    assert g.response_ids == [3, 4] and g.logprob_cal == [-1.0, -2.0] and g.logprob_policy == [-1.5, -2.5]
    assert g.entropy_cal == [2.0, 1.0]
    with pytest.raises(SGLangEngineError, match="2 tokens but 1 DLC log-prob records"):
        to_generation([1], {"output_ids": [3, 4], "meta_info": {
            "finish_reason": {"type": "length"}, "dlc_token_stats": [[-1.0, -1.5, 2.0]]}})


def test_a_token_the_sampler_could_not_draw_fails_the_response_with_the_cause():
    import numpy as np

    from megatron_rlvr.rollout.sglang.engine import SGLangEngineError

    meta = {"finish_reason": {"type": "length"},
            "dlc_token_stats": [np.float32([-1.0, -1.5, 0.5]), np.float32([np.nan, np.nan, np.nan])]}
    with pytest.raises(SGLangEngineError, match="response token 1 .*NaN/inf"):
        to_generation([1], {"output_ids": [3, 0], "meta_info": meta})
