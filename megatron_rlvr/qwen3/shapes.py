"""Qwen3 shape presets: the published architectures (Qwen3 technical report / HF config.json) plus tiny test shapes.

A preset is pure data: nothing here imports Megatron or allocates weights, so config validation and parameter
counting are instant for any size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Qwen3Shape:
    """Architecture of one Qwen3 model; field names follow transformers' Qwen3Config."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int = 128
    vocab_size: int = 151936
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960

    def num_parameters(self) -> int:
        """Parameter count (embeddings counted once when tied), computed from shapes only."""
        h, d, ffn = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h + 2 * d  # q, k, v, o projections (no bias) + q_norm, k_norm
        mlp = 3 * h * ffn  # gate, up, down
        layer = attn + mlp + 2 * h  # input_layernorm, post_attention_layernorm
        emb = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.num_hidden_layers * layer + emb + head + h  # + final norm

    def to_hf_config_dict(self) -> dict:
        """The fields of a transformers `Qwen3Config` for this shape."""
        out = asdict(self)
        out.update(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            hidden_act="silu",
            attention_bias=False,
            attention_dropout=0.0,
            initializer_range=0.02,
            use_cache=True,
            use_sliding_window=False,
        )
        return out


# Published shapes (Qwen/Qwen3-*/config.json). All use GQA with 8 KV heads and head_dim 128.
PRESETS: dict[str, Qwen3Shape] = {
    "qwen3-0.6b": Qwen3Shape(1024, 28, 16, 8, 3072, tie_word_embeddings=True),
    "qwen3-1.7b": Qwen3Shape(2048, 28, 16, 8, 6144, tie_word_embeddings=True),
    "qwen3-4b": Qwen3Shape(2560, 36, 32, 8, 9728, tie_word_embeddings=True),
    "qwen3-8b": Qwen3Shape(4096, 36, 32, 8, 12288),
    "qwen3-14b": Qwen3Shape(5120, 40, 40, 8, 17408),
    "qwen3-32b": Qwen3Shape(5120, 64, 64, 8, 25600),
    # Tiny Qwen3-shaped models for CPU tests and the embedded default. The vocabulary matches the byte-level
    # tokenizer the project ships (megatron_rlvr.tasks); 2 KV heads so TP=2 is testable.
    "tiny": Qwen3Shape(128, 2, 4, 2, 384, head_dim=32, vocab_size=128, max_position_embeddings=256),
    "tiny-tied": Qwen3Shape(
        128, 2, 4, 2, 384, head_dim=32, vocab_size=128, tie_word_embeddings=True, max_position_embeddings=256
    ),
    # Memory-model shape: smaller than `tiny` but the same head_dim and KV heads (SGLang's KV pool needs that).
    "tiny-mem": Qwen3Shape(64, 2, 2, 2, 192, head_dim=32, vocab_size=128, max_position_embeddings=256),
    # Four layers so PP=2 x virtual stages and PP=4 are testable.
    "tiny-deep": Qwen3Shape(128, 4, 4, 2, 384, head_dim=32, vocab_size=128, max_position_embeddings=256),
}


def get_preset(name: str, **overrides) -> Qwen3Shape:
    """Look up a preset by name (case-insensitive), optionally overriding fields (e.g. vocab_size)."""
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown Qwen3 preset {name!r}; choose one of {sorted(PRESETS)}")
    shape = PRESETS[key]
    return replace(shape, **overrides) if overrides else shape
