"""The SGLang model folder (`rollout.sglang.build_model_dir`), written without SGLang: both stacks for DLC, the policy
alone (`dlc_policy_only`) for runs with DLC off, and one clear error for a mismatched pair of arguments."""

import json

import pytest
import torch
from safetensors import safe_open

from megatron_rlvr.qwen3.shapes import get_preset
from megatron_rlvr.rollout.sglang.model_dir import build_model_dir


def _state(shape):
    from megatron_rlvr.qwen3.names import hf_shapes

    return {n: torch.zeros(s) for n, s in hf_shapes(shape).items()}


def test_the_dlc_folder_holds_both_stacks(tmp_path):
    pol, mem = get_preset("tiny"), get_preset("tiny-mem")
    out = build_model_dir(tmp_path, pol, mem, _state(pol), _state(mem), dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert "dlc_memory_config" in cfg and "dlc_policy_only" not in cfg
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {k.split(".", 1)[0] for k in f.keys()} == {"policy", "memory"}


def test_without_a_memory_model_the_folder_holds_the_policy_alone(tmp_path):
    pol = get_preset("tiny")
    out = build_model_dir(tmp_path, pol, None, _state(pol), dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dlc_policy_only"] is True and "dlc_memory_config" not in cfg
    assert cfg["architectures"] == ["DLCQwen3ForCausalLM"] and cfg["num_hidden_layers"] == pol.num_hidden_layers
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.keys() and all(k.startswith("policy.") for k in f.keys())


def test_memory_weights_without_a_memory_shape_are_refused_before_anything_is_written(tmp_path):
    pol, mem = get_preset("tiny"), get_preset("tiny-mem")
    with pytest.raises(ValueError, match="policy-only"):
        build_model_dir(tmp_path / "m", pol, None, _state(pol), _state(mem))
    assert not (tmp_path / "m").exists()
