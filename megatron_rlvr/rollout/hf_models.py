"""Rollout stage: transformers Qwen3 models built from the project's shape presets (the embedded engine's model code).

Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`), the names weight
pushes from the trainer carry. transformers 5.x keeps RoPE settings in `rope_parameters` with a default theta of
1e4, so the preset's theta (1e6 for Qwen3) is always passed explicitly.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_rlvr.models.presets import Qwen3Shape


def qwen3_config(shape: Qwen3Shape, attn_implementation: str = "sdpa"):
    """A transformers `Qwen3Config` for `shape`."""
    from transformers import Qwen3Config

    fields = shape.to_hf_config_dict()
    fields.pop("rope_theta", None)
    cfg = Qwen3Config(**fields, rope_parameters={"rope_type": "default", "rope_theta": float(shape.rope_theta)})
    cfg._attn_implementation = attn_implementation
    return cfg


def build_qwen3(
    shape: Qwen3Shape,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: Optional[int] = None,
    attn_implementation: str = "sdpa",
):
    """A `Qwen3ForCausalLM` of `shape` in eval mode, randomly initialised (from `seed` when given)."""
    from transformers import Qwen3ForCausalLM

    cfg = qwen3_config(shape, attn_implementation)
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
