"""Conversion name map (Qwen3): exact round trips on arange-filled weights and the layouts Megatron uses."""

import pytest
import torch

from megatron_rlvr.qwen3 import names as qwen3_map
from megatron_rlvr.qwen3.shapes import get_preset

TINY = ["tiny", "tiny-tied", "tiny-mem"]


def _arange(shape, offset: int) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    return torch.arange(offset, offset + n, dtype=torch.float64).reshape(shape)


@pytest.mark.parametrize("preset", TINY + ["qwen3-8b"])
def test_hf_names_and_shapes_equal_transformers_qwen3_parameters(preset):
    from transformers import Qwen3ForCausalLM

    from megatron_rlvr.qwen3.hf import hf_config

    shape = get_preset(preset)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(hf_config(shape, torch.float32))
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}  # a tied weight appears once
    assert qwen3_map.hf_shapes(shape) == expected
    assert ("lm_head.weight" in expected) == (not shape.tie_word_embeddings)


@pytest.mark.parametrize("preset", TINY)
def test_megatron_to_hf_to_megatron_is_exact_on_arange_weights(preset):
    shape = get_preset(preset)
    offset, hf = 0, {}
    originals = {}
    for name in qwen3_map.mcore_names(shape):
        t = _arange(qwen3_map.mcore_shape(shape, name), offset)
        offset += t.numel()
        originals[name] = t
        hf.update(qwen3_map.mcore_to_hf(shape, name, t))
    assert list(hf) == qwen3_map.hf_names(shape)
    # every original element appears exactly once among the HF tensors: nothing dropped, nothing duplicated
    values = torch.cat([t.flatten() for t in hf.values()]).sort().values
    assert torch.equal(values, torch.arange(offset, dtype=torch.float64))
    for name, t in originals.items():
        assert torch.equal(qwen3_map.hf_to_mcore(shape, name, hf.__getitem__), t), name


def test_qkv_rows_are_grouped_per_query_group():
    shape = get_preset("tiny")  # 4 query heads, 2 KV heads (groups), head_dim 32
    d, h = shape.head_dim, shape.hidden_size
    q = torch.arange(4).repeat_interleave(d).float()[:, None].expand(4 * d, h)  # row value = query head index
    k = 10 + torch.arange(2).repeat_interleave(d).float()[:, None].expand(2 * d, h)
    v = 20 + torch.arange(2).repeat_interleave(d).float()[:, None].expand(2 * d, h)
    hf = {"model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.k_proj.weight": k,
          "model.layers.0.self_attn.v_proj.weight": v}
    qkv = qwen3_map.hf_to_mcore(shape, "decoder.layers.0.self_attention.linear_qkv.weight", hf.__getitem__)
    heads = qkv[::d, 0].tolist()  # one value per head_dim block of rows
    # group 0: q0 q1 k0 v0, group 1: q2 q3 k1 v1 (MEGATRON-NOTES.md)
    assert heads == [0, 1, 10, 20, 2, 3, 11, 21]


def test_linear_fc1_is_gate_then_up():
    shape = get_preset("tiny")
    ffn, h = shape.intermediate_size, shape.hidden_size
    fc1 = torch.cat([torch.zeros(ffn, h), torch.ones(ffn, h)])
    out = dict(qwen3_map.mcore_to_hf(shape, "decoder.layers.1.mlp.linear_fc1.weight", fc1))
    assert torch.all(out["model.layers.1.mlp.gate_proj.weight"] == 0)
    assert torch.all(out["model.layers.1.mlp.up_proj.weight"] == 1)


def test_checkpoint_keys_put_the_layer_index_back():
    name = qwen3_map.logical_name("decoder.layers.self_attention.q_layernorm.weight", 7)
    assert name == "decoder.layers.7.self_attention.q_layernorm.weight"
    assert qwen3_map.checkpoint_key(name) == ("decoder.layers.self_attention.q_layernorm.weight", 7)
    assert qwen3_map.checkpoint_key("embedding.word_embeddings.weight") == ("embedding.word_embeddings.weight", None)


def test_tied_models_have_no_output_layer_and_unknown_names_fail_loudly():
    tied = get_preset("tiny-tied")
    assert "output_layer.weight" not in qwen3_map.mcore_names(tied)
    with pytest.raises(KeyError, match="tied"):
        qwen3_map.mcore_to_hf(tied, "output_layer.weight", torch.zeros(tied.vocab_size, tied.hidden_size))
    with pytest.raises(KeyError, match="no Qwen3 conversion rule"):
        qwen3_map.resolve_mcore("decoder.layers.0.mlp.router.weight")
    with pytest.raises(ValueError, match="shape"):
        qwen3_map.mcore_to_hf(tied, "decoder.final_layernorm.weight", torch.zeros(3))
