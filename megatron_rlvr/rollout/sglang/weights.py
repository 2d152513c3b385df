"""Rollout stage, weight sync: HF Qwen3 names -> the DLC model's parameter names, checked and bucketed.

The trainer exports each model with Hugging Face Qwen3 names (the converter's mapping). In the SGLang DLC model
the two stacks live under `policy.` and `memory.`; SGLang's own Qwen3 loader then fuses q/k/v and gate/up.
Names are checked against the shape up front, so a wrong or missing tensor fails with the name, not as a silent
partial update inside the engine.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Optional

import torch

from megatron_rlvr.models.presets import Qwen3Shape
from megatron_rlvr.rollout.sglang.protocol import MODEL_PREFIXES

_LAYER_SUFFIXES = (
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def hf_qwen3_names(shape: Qwen3Shape) -> list[str]:
    """Every HF Qwen3 parameter name of `shape` (lm_head only when the embeddings are untied)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    names += [f"model.layers.{i}.{s}" for i in range(shape.num_hidden_layers) for s in _LAYER_SUFFIXES]
    if not shape.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def check_hf_name(model: str, name: str, shape: Optional[Qwen3Shape]) -> None:
    """Raise ValueError if `name` is not an HF Qwen3 parameter name of `shape`."""
    if model not in MODEL_PREFIXES:
        raise ValueError(f"model must be one of {MODEL_PREFIXES}, got {model!r}")
    m = _LAYER_RE.match(name)
    if m:
        ok = m.group(2) in _LAYER_SUFFIXES and (shape is None or int(m.group(1)) < shape.num_hidden_layers)
    else:
        ok = name in ("model.embed_tokens.weight", "model.norm.weight") or (
            name == "lm_head.weight" and (shape is None or not shape.tie_word_embeddings))
    if not ok:
        layers = "" if shape is None else f" with {shape.num_hidden_layers} layers"
        raise ValueError(
            f"{model} weight {name!r} is not a Hugging Face Qwen3 parameter name of this model{layers}; export "
            "weights with the HF Qwen3 mapping (e.g. model.layers.0.self_attn.q_proj.weight, lm_head.weight)"
        )


def prefixed(model: str, named_tensors: Iterable[tuple[str, torch.Tensor]],
             shape: Optional[Qwen3Shape] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(`<model>.<HF name>`, tensor) pairs for the DLC model, each name checked against `shape`."""
    for name, tensor in named_tensors:
        check_hf_name(model, name, shape)
        yield f"{model}.{name}", tensor


def buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list]:
    """Group tensors into lists of at most `bucket_bytes` (a larger single tensor forms its own bucket)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket, size = [], 0
    for name, t in named_tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket
