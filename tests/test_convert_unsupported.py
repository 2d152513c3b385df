"""`convert from-hf` refuses every Qwen3 config value the Megatron model does not implement, naming the field, its
value and what is supported, and leaves no output (before: a sliding-window or GELU config converted
"successfully" and Megatron's logits then differed from transformers')."""

import json

import pytest
import torch

from megatron_rlvr.convert import ConversionError
from megatron_rlvr.convert.from_hf import import_hf
from megatron_rlvr.qwen3.hf import hf_config
from megatron_rlvr.qwen3.shapes import get_preset
from megatron_rlvr.qwen3.support import unsupported_fields


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(3)
    Qwen3ForCausalLM(hf_config(get_preset("tiny"), torch.float32)).save_pretrained(str(root))
    return root


def _with(folder, tmp_path, **changes):
    out = tmp_path / "hf"
    out.mkdir()
    for f in folder.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((out / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("changes,field,value", [
    ({"hidden_act": "gelu"}, "hidden_act", "'gelu'"),
    ({"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1, "layer_types": None},
     "use_sliding_window", "True"),
    ({"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 64}, "layer_types",
     "'sliding_attention'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                          "original_max_position_embeddings": 256}}, "rope_parameters.rope_type", "'yarn'"),
    ({"attention_bias": True}, "attention_bias", "True"),
    ({"attention_dropout": 0.1}, "attention_dropout", "0.1"),
])
def test_from_hf_refuses_a_config_value_megatron_does_not_implement(hf_folder, tmp_path, changes, field, value):
    src = _with(hf_folder, tmp_path, **changes)
    with pytest.raises(ConversionError) as err:
        import_hf(src, tmp_path / "out")
    msg = str(err.value)
    assert f"{field}=" in msg and value in msg and "supported:" in msg, msg
    assert "config.json" in msg
    assert not (tmp_path / "out").exists()


def test_a_standard_qwen3_config_has_no_unsupported_fields():
    from transformers import Qwen3Config

    assert unsupported_fields(hf_config(get_preset("qwen3-8b"), torch.bfloat16)) == []
    assert unsupported_fields(Qwen3Config()) == []


def test_every_unsupported_field_is_named_in_one_error():
    from transformers import Qwen3Config

    cfg = Qwen3Config(hidden_act="gelu", attention_bias=True, num_hidden_layers=2)
    assert [name for name, _, _ in unsupported_fields(cfg)] == ["hidden_act", "attention_bias"]
