"""Which transformers `Qwen3Config` values the Megatron Qwen3 model implements; everything else is refused.

The Megatron model (qwen3/provider.py) is SiLU-gated, bias-free, full causal attention with default
(unscaled) RoPE over the whole head and no dropout. A config that asks for anything else would convert
"successfully" and then give different logits (and `to-hf` would write a different config back), so conversion
refuses it naming the field, its value and what is supported.
"""

from __future__ import annotations

from typing import Any

from megatron_rlvr.errors import ConversionError


def _rope(cfg: Any) -> dict:
    rope = getattr(cfg, "rope_parameters", None) or {}
    legacy = getattr(cfg, "rope_scaling", None) or {}  # transformers 4.x name of the same settings
    return {**legacy, **rope} if isinstance(rope, dict) else dict(legacy)


def unsupported_fields(cfg: Any) -> list[tuple[str, Any, str]]:
    """(field, value, what is supported) for every value of `cfg` the Megatron Qwen3 model does not implement."""
    bad = []

    def need(ok: bool, name: str, value: Any, supported: str) -> None:
        if not ok:
            bad.append((name, value, supported))

    act = getattr(cfg, "hidden_act", "silu")
    need(act == "silu", "hidden_act", act, "'silu' (the SwiGLU MLP)")
    need(not getattr(cfg, "attention_bias", False), "attention_bias", cfg.attention_bias, "false (no biases)")
    for name in ("mlp_bias", "bias"):
        if getattr(cfg, name, False):
            bad.append((name, getattr(cfg, name), "false (no biases)"))
    need(not getattr(cfg, "use_sliding_window", False), "use_sliding_window", getattr(cfg, "use_sliding_window", None),
         "false (full causal attention in every layer)")
    kinds = sorted(set(getattr(cfg, "layer_types", None) or ["full_attention"]))
    need(kinds == ["full_attention"], "layer_types", kinds, "'full_attention' in every layer")
    rope = _rope(cfg)
    need(rope.get("rope_type", rope.get("type", "default")) == "default", "rope_parameters.rope_type",
         rope.get("rope_type", rope.get("type")), "'default' (no RoPE scaling: linear/dynamic/yarn/llama3 are not "
         "implemented)")
    need(rope.get("factor") in (None, 1, 1.0), "rope_parameters.factor", rope.get("factor"),
         "absent or 1 (no RoPE scaling)")
    frac = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0))
    need(frac in (None, 1, 1.0), "partial_rotary_factor", frac, "1.0 (RoPE over the whole head)")
    drop = getattr(cfg, "attention_dropout", 0.0)
    need(not drop, "attention_dropout", drop, "0.0 (the trainer runs without dropout)")
    return bad


def check_supported(cfg: Any, where: str) -> None:
    """Raise one ConversionError naming every unsupported field of `cfg` (read from `where`)."""
    bad = unsupported_fields(cfg)
    if bad:
        items = "; ".join(f"{name}={value!r} (supported: {supported})" for name, value, supported in bad)
        raise ConversionError(f"{where}: the Megatron Qwen3 model does not implement {items}; convert a standard "
                              "Qwen3 config or change these fields")
