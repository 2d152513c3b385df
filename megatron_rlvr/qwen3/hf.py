"""The Qwen3 family on the Hugging Face side: config <-> `Qwen3Shape`, and transformers models built from a shape
(the embedded engine's model code).

Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`), the names weight
pushes from the trainer carry. transformers 5.x keeps RoPE settings in `rope_parameters` with a default theta of
1e4, so the preset's theta (1e6 for Qwen3) is always passed explicitly.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Optional

import torch

from megatron_rlvr.errors import ConversionError
from megatron_rlvr.qwen3 import names as qwen3_map
from megatron_rlvr.qwen3.shapes import Qwen3Shape
from megatron_rlvr.qwen3.support import check_supported


def hf_config(shape: Qwen3Shape, dtype: Optional[torch.dtype] = None, attn_implementation: Optional[str] = None):
    """transformers `Qwen3Config` of `shape` (RoPE theta passed explicitly: transformers 5 defaults to 1e4).

    `dtype` is the config's declared dtype (what an exported folder says it holds); `attn_implementation` selects
    the attention kernel of a model built from it (the embedded engine uses sdpa)."""
    from transformers import Qwen3Config

    values = shape.to_hf_config_dict()
    theta = values.pop("rope_theta")
    extra = {} if dtype is None else {"dtype": dtype}
    cfg = Qwen3Config(**values, rope_parameters={"rope_type": "default", "rope_theta": float(theta)}, **extra)
    if attn_implementation is not None:
        cfg._attn_implementation = attn_implementation
    return cfg


def shape_from_hf_config(hf_dir: Path) -> tuple[Qwen3Shape, Optional[torch.dtype]]:
    """Qwen3Shape (and the declared dtype) of a Hugging Face folder; ConversionError for anything not Qwen3."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path} is missing: --hf must be a Hugging Face model folder with a config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from None
    archs = raw.get("architectures") or []
    if raw.get("model_type") != qwen3_map.HF_MODEL_TYPE or qwen3_map.HF_ARCHITECTURE not in archs:
        raise ConversionError(
            f"{path}: unsupported architecture (model_type={raw.get('model_type')!r}, architectures={archs}); "
            f"this converter handles {qwen3_map.HF_ARCHITECTURE} (model_type 'qwen3') only")
    layer_types, n_layers = raw.get("layer_types"), raw.get("num_hidden_layers")
    if isinstance(layer_types, list) and isinstance(n_layers, int) and len(layer_types) != n_layers:
        raise ConversionError(f"{path}: layer_types lists {len(layer_types)} layers but num_hidden_layers is "
                              f"{n_layers}; fix config.json so they agree (one entry per layer)")
    from transformers import Qwen3Config

    try:
        cfg = Qwen3Config.from_pretrained(str(hf_dir))  # normalises old-style rope_theta into rope_parameters
    except Exception as err:  # transformers / huggingface_hub validate configs with their own error types
        reason = " ".join(str(err).split())
        raise ConversionError(f"{path} is not a valid Qwen3 config: {reason}") from None

    check_supported(cfg, str(path))
    rope = getattr(cfg, "rope_parameters", None) or {}
    values = {f.name: getattr(cfg, f.name) for f in fields(Qwen3Shape) if f.name != "rope_theta"}
    values["rope_theta"] = float(rope.get("rope_theta", raw.get("rope_theta", Qwen3Shape.rope_theta)))
    if values["head_dim"] is None:
        values["head_dim"] = cfg.hidden_size // cfg.num_attention_heads
    dtype = getattr(cfg, "dtype", None)
    return Qwen3Shape(**values), dtype if isinstance(dtype, torch.dtype) else None


def build_qwen3(
    shape: Qwen3Shape,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: Optional[int] = None,
    attn_implementation: str = "sdpa",
):
    """A `Qwen3ForCausalLM` of `shape` in eval mode, randomly initialised (from `seed` when given)."""
    from transformers import Qwen3ForCausalLM

    cfg = hf_config(shape, attn_implementation=attn_implementation)
    if seed is not None:
        # transformers initialises from the global generator; fork it so building a model does not shift the caller's
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen3ForCausalLM(cfg)
    else:
        model = Qwen3ForCausalLM(cfg)
    return model.to(device=device, dtype=dtype).eval()


def hf_parameter_shapes(model) -> dict[str, torch.Size]:
    """Hugging Face parameter names of `model` and their shapes (tied embeddings appear once, as embed_tokens)."""
    return {name: p.shape for name, p in model.named_parameters()}
