"""Qwen3 family: the declarative Megatron-Core <-> Hugging Face name map of the Qwen3 family.

Megatron side: the *logical* (tensor-parallel unsharded) tensors, named like the keys of Megatron's dist-checkpoints
with the layer index put back in: ``decoder.layers.{i}.self_attention.linear_qkv.weight`` is layer i's slice of the
checkpoint tensor ``decoder.layers.self_attention.linear_qkv.weight`` of shape (L, ...). These names are the same
for Transformer-Engine and local layer specs (the local spec maps its norms to TE's ``*.layer_norm_weight`` keys),
and the checkpoint's global tensors are exactly the logical ones (MEGATRON-NOTES.md, "HF <-> Megatron layout"):

* ``linear_qkv`` rows are grouped per query group: for each of the ng KV heads, its nh/ng query heads, then its
  key head, then its value head (head_dim rows each). Tensor parallelism splits whole groups.
* ``linear_fc1`` is [gate; up] (SiLU on the first half). Under TP each rank holds [gate_r; up_r]; Megatron's
  sharded state dict stores the two halves at their own offsets (``apply_swiglu_sharded_factory``), so the logical
  tensor is [gate; up] of the full matrices.
* Tied embeddings: Megatron has no ``output_layer.weight`` (the last stage's copy is saved under the embedding's
  key) and Hugging Face has no ``lm_head.weight``.

Every converter (offline to-hf / from-hf, and the live weight stream to rollout engines) goes through
:func:`mcore_to_hf` and :func:`hf_to_mcore`, so they cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megatron_rlvr.qwen3.shapes import Qwen3Shape

LAYERS_PREFIX = "decoder.layers."
HF_ARCHITECTURE = "Qwen3ForCausalLM"
HF_MODEL_TYPE = "qwen3"


@dataclass(frozen=True)
class Rule:
    """One Megatron logical tensor and the Hugging Face tensor(s) it is made of; ``{i}`` is the layer index."""

    mcore: str
    hf: tuple[str, ...]
    # how the Megatron tensor splits into the HF tensors: "copy" (1:1), "qkv" (per-group interleave), "gate_up"
    split: str = "copy"
    # present only when embeddings are untied
    untied_only: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.mcore


_L = "model.layers.{i}."
QWEN3_RULES: tuple[Rule, ...] = (
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",)),
    Rule("decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight", (_L + "input_layernorm.weight",)),
    Rule("decoder.layers.{i}.self_attention.linear_qkv.weight",
         (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight", _L + "self_attn.v_proj.weight"), "qkv"),
    Rule("decoder.layers.{i}.self_attention.q_layernorm.weight", (_L + "self_attn.q_norm.weight",)),
    Rule("decoder.layers.{i}.self_attention.k_layernorm.weight", (_L + "self_attn.k_norm.weight",)),
    Rule("decoder.layers.{i}.self_attention.linear_proj.weight", (_L + "self_attn.o_proj.weight",)),
    Rule("decoder.layers.{i}.mlp.linear_fc1.layer_norm_weight", (_L + "post_attention_layernorm.weight",)),
    Rule("decoder.layers.{i}.mlp.linear_fc1.weight", (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"),
         "gate_up"),
    Rule("decoder.layers.{i}.mlp.linear_fc2.weight", (_L + "mlp.down_proj.weight",)),
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",)),
    Rule("output_layer.weight", ("lm_head.weight",), untied_only=True),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


_MCORE_PATTERNS = [(_pattern(r.mcore), r) for r in QWEN3_RULES]
_HF_PATTERNS = [(_pattern(h), r, j) for r in QWEN3_RULES for j, h in enumerate(r.hf)]


def _rules(shape: Qwen3Shape) -> list[Rule]:
    return [r for r in QWEN3_RULES if not (r.untied_only and shape.tie_word_embeddings)]


def _fill(template: str, layer: Optional[int]) -> str:
    return template.format(i=layer) if layer is not None else template


# ---------------------------------------------------------------------------------------------------- naming
def resolve_mcore(name: str) -> tuple[Rule, Optional[int]]:
    """The rule and layer index of a Megatron logical name; KeyError names the unknown tensor."""
    for pat, rule in _MCORE_PATTERNS:
        m = pat.match(name)
        if m:
            return rule, int(m.group(1)) if rule.per_layer else None
    raise KeyError(f"no Qwen3 conversion rule for Megatron tensor {name!r}")


def resolve_hf(name: str) -> tuple[Rule, Optional[int], int]:
    """(rule, layer index, position among the rule's HF tensors) of a Hugging Face Qwen3 name."""
    for pat, rule, j in _HF_PATTERNS:
        m = pat.match(name)
        if m:
            return rule, int(m.group(1)) if rule.per_layer else None, j
    raise KeyError(f"no Qwen3 conversion rule for Hugging Face tensor {name!r}")


def logical_name(checkpoint_key: str, layer: Optional[int]) -> str:
    """Megatron logical name of a dist-checkpoint key (layer-stacked keys need the global layer index)."""
    if layer is None:
        return checkpoint_key
    if not checkpoint_key.startswith(LAYERS_PREFIX):
        raise KeyError(f"{checkpoint_key!r} has a layer axis but is not under {LAYERS_PREFIX!r}")
    return f"{LAYERS_PREFIX}{layer}.{checkpoint_key[len(LAYERS_PREFIX):]}"


def checkpoint_key(name: str) -> tuple[str, Optional[int]]:
    """Inverse of :func:`logical_name`: (dist-checkpoint key, layer index or None)."""
    rule, layer = resolve_mcore(name)
    return (rule.mcore.replace("{i}.", ""), layer) if rule.per_layer else (name, None)


def hf_sources(name: str) -> list[str]:
    """The Hugging Face names Megatron tensor `name` is made of (one for a plain rename)."""
    rule, layer = resolve_mcore(name)
    return [_fill(h, layer) for h in rule.hf]


def mcore_layer_names(shape: Qwen3Shape, layer: int) -> list[str]:
    """Logical names of transformer layer `layer`, in Hugging Face order."""
    return [_fill(r.mcore, layer) for r in _rules(shape) if r.per_layer]


def mcore_names(shape: Qwen3Shape) -> list[str]:
    """Every logical Megatron tensor of `shape` in streaming order: embedding, layer 0..L-1, final norm, output."""
    rules = _rules(shape)
    names = [r.mcore for r in rules if not r.per_layer and r.mcore.startswith("embedding.")]
    for layer in range(shape.num_hidden_layers):
        names += mcore_layer_names(shape, layer)
    names += [r.mcore for r in rules if not r.per_layer and not r.mcore.startswith("embedding.")]
    return names


def hf_names(shape: Qwen3Shape) -> list[str]:
    """Every Hugging Face tensor of `shape`, in the order the converters stream them."""
    out = []
    for name in mcore_names(shape):
        rule, layer = resolve_mcore(name)
        out += [_fill(h, layer) for h in rule.hf]
    return out


def check_hf_name(name: str, shape: Optional[Qwen3Shape] = None, what: str = "weight") -> None:
    """Raise ValueError unless `name` is a Hugging Face Qwen3 tensor (of `shape`: layer in range, lm_head only
    when untied). The weight push checks every name with it, so a wrong tensor fails by name, not as a silent
    partial update inside an engine."""
    try:
        rule, layer, _ = resolve_hf(name)
    except KeyError:
        rule, layer = None, None
    ok = rule is not None and (shape is None or (
        (layer is None or layer < shape.num_hidden_layers) and not (rule.untied_only and shape.tie_word_embeddings)))
    if not ok:
        layers = "" if shape is None else f" with {shape.num_hidden_layers} layers"
        tied = "" if shape is None or not shape.tie_word_embeddings else " (tied embeddings: no lm_head.weight)"
        raise ValueError(
            f"{what} {name!r} is not a Hugging Face Qwen3 parameter name of this model{layers}{tied}; export "
            "weights with the HF Qwen3 mapping (e.g. model.layers.0.self_attn.q_proj.weight, lm_head.weight)")


def mcore_shape(shape: Qwen3Shape, name: str) -> tuple[int, ...]:
    """Full (logical) shape of Megatron tensor `name` for `shape`."""
    rule, _ = resolve_mcore(name)
    h, d = shape.hidden_size, shape.head_dim
    q, kv = shape.num_attention_heads * d, shape.num_key_value_heads * d
    leaf = rule.mcore.split(".", 3)[-1] if rule.per_layer else rule.mcore
    return {
        "embedding.word_embeddings.weight": (shape.vocab_size, h),
        "output_layer.weight": (shape.vocab_size, h),
        "decoder.final_layernorm.weight": (h,),
        "self_attention.linear_qkv.layer_norm_weight": (h,),
        "self_attention.linear_qkv.weight": (q + 2 * kv, h),
        "self_attention.q_layernorm.weight": (d,),
        "self_attention.k_layernorm.weight": (d,),
        "self_attention.linear_proj.weight": (h, q),
        "mlp.linear_fc1.layer_norm_weight": (h,),
        "mlp.linear_fc1.weight": (2 * shape.intermediate_size, h),
        "mlp.linear_fc2.weight": (h, shape.intermediate_size),
    }[leaf]


def hf_shapes(shape: Qwen3Shape) -> dict[str, tuple[int, ...]]:
    """Hugging Face name -> shape for every tensor of `shape` (derived through the map on meta tensors)."""
    out: dict[str, tuple[int, ...]] = {}
    for name in mcore_names(shape):
        meta = torch.empty(mcore_shape(shape, name), device="meta")
        out.update((n, tuple(t.shape)) for n, t in mcore_to_hf(shape, name, meta))
    return out


# ---------------------------------------------------------------------------------------------------- tensors
def _qkv_groups(shape: Qwen3Shape) -> tuple[int, int, int]:
    ng, nh = shape.num_key_value_heads, shape.num_attention_heads
    if nh % ng:
        raise ValueError(f"num_attention_heads {nh} is not a multiple of num_key_value_heads {ng}")
    return ng, nh // ng, shape.head_dim


def mcore_to_hf(shape: Qwen3Shape, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Split/rename one full Megatron tensor into its Hugging Face tensor(s) (new contiguous tensors)."""
    rule, layer = resolve_mcore(name)
    if rule.untied_only and shape.tie_word_embeddings:
        raise KeyError(f"{name} does not exist in a model with tied embeddings")
    expected = mcore_shape(shape, name)
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name}: got shape {tuple(tensor.shape)}, the model shape implies {expected}")
    names = [_fill(h, layer) for h in rule.hf]
    if rule.split == "copy":
        return [(names[0], tensor)]
    if rule.split == "qkv":
        ng, qpg, d = _qkv_groups(shape)
        grouped = tensor.view(ng, qpg + 2, d, -1)  # (ng, [q heads of the group, k, v], d, h)
        q = grouped[:, :qpg].reshape(ng * qpg * d, -1)
        k = grouped[:, qpg].reshape(ng * d, -1)
        v = grouped[:, qpg + 1].reshape(ng * d, -1)
        return [(names[0], q.contiguous()), (names[1], k.contiguous()), (names[2], v.contiguous())]
    gate, up = tensor.chunk(2, dim=0)  # [gate; up]
    return [(names[0], gate.contiguous()), (names[1], up.contiguous())]


def hf_to_mcore(shape: Qwen3Shape, name: str, get_hf: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Build full Megatron tensor `name` from the Hugging Face tensors `get_hf(hf_name)` returns."""
    rule, layer = resolve_mcore(name)
    parts = [get_hf(_fill(h, layer)) for h in rule.hf]
    if rule.split == "copy":
        out = parts[0]
    elif rule.split == "qkv":
        ng, qpg, d = _qkv_groups(shape)
        q, k, v = parts
        h = q.shape[-1]
        out = torch.cat([q.reshape(ng, qpg, d, h), k.reshape(ng, 1, d, h), v.reshape(ng, 1, d, h)], dim=1)
        out = out.reshape(ng * (qpg + 2) * d, h)
    else:
        out = torch.cat(parts, dim=0)
    expected = mcore_shape(shape, name)
    if tuple(out.shape) != expected:
        raise ValueError(f"{name}: Hugging Face tensors give shape {tuple(out.shape)}, the model shape implies "
                         f"{expected}")
    return out
