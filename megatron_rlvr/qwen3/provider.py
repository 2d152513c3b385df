"""Qwen3 family, Megatron side: build Megatron-Core GPTModels with the Qwen3 architecture.

Qwen3 = pre-norm decoder with RMSNorm (eps 1e-6), RMSNorm on queries and keys per head (qk-layernorm), SwiGLU MLP,
grouped-query attention, no biases, non-interleaved RoPE (theta 1e6), tied or untied embeddings per size
(presets.py). Layers come from Transformer-Engine's spec when TE is importable and a GPU is present (or when
``transformer_impl == "transformer_engine"``), otherwise from Megatron's local spec with attention computed by
``torch.nn.functional.scaled_dot_product_attention`` (:class:`SDPAttention`: causal, GQA-aware, no mask tensor;
packed ``thd`` sequences attend within each sequence).

Call these inside the model's parallel layout (``ParallelContext.layout``): the model captures the current
Megatron process groups.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_rlvr.qwen3.shapes import Qwen3Shape

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str) -> torch.dtype:
    """ModelConfig.dtype -> torch dtype ("auto": bfloat16 on GPU, float32 on CPU)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"model dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def use_transformer_engine(model_cfg: ModelConfig) -> bool:
    """Whether `model_cfg.transformer_impl` selects Transformer-Engine layers on this machine."""
    have_te = importlib.util.find_spec("transformer_engine") is not None
    if model_cfg.transformer_impl == "transformer_engine":
        if not have_te:
            raise RuntimeError(
                "transformer_impl=transformer_engine but transformer_engine is not importable; "
                "install it (pip install -e '.[te]') or set transformer_impl=auto/local"
            )
        return True
    if model_cfg.transformer_impl == "local":
        return False
    return have_te and torch.cuda.is_available()


class SDPAttention(DotProductAttention):
    """Megatron core attention computed by torch SDPA: causal, grouped-query, no materialised mask.

    Takes and returns Megatron's layouts: query (sq, b, np, hn), key/value (sk, b, ng, hn) -> (sq, b, np * hn),
    with np/ng the heads/groups of this tensor-parallel rank. Packed sequences (``packed_seq_params`` in the
    ``thd`` format: query (t, np, hn), key/value (t, ng, hn) -> (t, np * hn)) attend causally within each
    sequence of ``cu_seqlens``: one SDPA call per sequence, the same math as the padded batch without the padding.
    Parameters and checkpoints are those of DotProductAttention (it has none for Qwen3).
    """

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None:
            raise NotImplementedError("SDPAttention does not support an attention bias")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if mask_type != AttnMaskType.causal:
            raise NotImplementedError(f"SDPAttention implements causal attention only, got {mask_type}")
        if packed_seq_params is not None:
            return self._forward_packed(query, key, value, packed_seq_params)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # (b, heads, s, hn)
        ctx = self._sdpa(q, k, v)
        sq, b = query.size(0), query.size(1)
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)

    def _sdpa(self, q, k, v):
        p = self.attention_dropout.p if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=p, scale=self.softmax_scale, enable_gqa=q.size(1) != k.size(1),
        )

    def _forward_packed(self, query, key, value, packed_seq_params):
        if packed_seq_params.qkv_format != "thd":
            raise NotImplementedError(f"SDPAttention packs only the thd format, got {packed_seq_params.qkv_format!r}")
        cu_q, cu_kv = packed_seq_params.cu_seqlens_q, packed_seq_params.cu_seqlens_kv
        if cu_kv is not None and cu_kv is not cu_q and not torch.equal(cu_q, cu_kv):
            raise NotImplementedError("SDPAttention packs self-attention only (cu_seqlens_q == cu_seqlens_kv)")
        if getattr(packed_seq_params, "cu_seqlens_q_padded", None) is not None:
            raise NotImplementedError("SDPAttention does not support padded packed sequences (cu_seqlens_q_padded)")
        bounds = getattr(packed_seq_params, "host_bounds", None) or cu_q.tolist()
        outs = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            q, k, v = (t[s:e].permute(1, 0, 2).unsqueeze(0) for t in (query, key, value))  # (1, heads, len, hn)
            outs.append(self._sdpa(q, k, v)[0].permute(1, 0, 2))  # (len, np, hn)
        ctx = torch.cat(outs) if outs else query.new_zeros(0, query.size(1), query.size(2))
        return ctx.reshape(query.size(0), self.hidden_size_per_partition)


def layer_spec(shape: Qwen3Shape, model_cfg: ModelConfig) -> ModuleSpec:
    """The transformer-layer spec of a Qwen3 layer (TE or local + SDPA; see module docstring)."""
    del shape  # every Qwen3 size uses the same layer structure
    if use_transformer_engine(model_cfg):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def transformer_config(shape: Qwen3Shape, model_cfg: ModelConfig, dtype: Optional[torch.dtype] = None,
                       **overrides) -> TransformerConfig:
    """Megatron TransformerConfig of `shape` under `model_cfg`'s parallel layout.

    `dtype` defaults to ``resolve_dtype(model_cfg.dtype)``. ``model_cfg.megatron`` is passed through verbatim
    (e.g. recompute settings) and `overrides` last (e.g. ``perform_initialization=False``).
    """
    dtype = dtype or resolve_dtype(model_cfg.dtype)
    par = model_cfg.parallel
    cuda = torch.cuda.is_available()
    kwargs = dict(
        num_layers=shape.num_hidden_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.intermediate_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_key_value_heads,
        kv_channels=shape.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=shape.rms_norm_eps,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        virtual_pipeline_model_parallel_size=par.vpp if par.vpp > 1 else None,
        sequence_parallel=False,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # Fused kernels need CUDA (and some TE/apex); on CPU use the unfused torch paths.
        bias_activation_fusion=cuda,
        masked_softmax_fusion=False,
        bias_dropout_fusion=cuda,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        # Full weights drawn on CPU, then sliced: the same seed gives the same model under every TP size, and on
        # CPU and GPU alike (init_device=cpu, the default). Drawn on the GPU the same seed is a different model:
        # the default tiny run then landed in a basin its warm start could not leave (GPU-NOTES, 2026-12-02).
        use_cpu_initialization=not cuda or model_cfg.init_device == "cpu",
        # Interleaved pipeline: batched p2p gave wrong losses and gradients on gloo (MEGATRON-NOTES.md) and on
        # NCCL (2x H200, tests/gpu/test_parallel_gpu.py). At PP=2 the previous and next stage are the same peer;
        # a batch of send/recv ops to one peer is matched in posting order, so a gradient sent "prev" can land
        # in the receiver's activation buffer. The unbatched path orders sends and receives by rank parity.
        batch_p2p_comm=cuda and par.vpp <= 1,
        deterministic_mode=not cuda,
    )
    if par.vpp > 1 and model_cfg.megatron.get("batch_p2p_comm"):
        raise ValueError(
            f"model.megatron.batch_p2p_comm=True with parallel.vpp={par.vpp}: batched p2p ops give wrong losses and "
            "gradients in interleaved pipelines (see the comment above); remove batch_p2p_comm from model.megatron"
        )
    kwargs.update(model_cfg.megatron)
    kwargs.update(overrides)
    unknown = set(model_cfg.megatron) - {f.name for f in dataclasses.fields(TransformerConfig)}
    if unknown:
        raise ValueError(
            f"model.megatron has keys that are not megatron.core TransformerConfig fields: {sorted(unknown)}; "
            "fix the spelling or remove them"
        )
    return TransformerConfig(**kwargs)


def build_gpt_model(
    shape: Qwen3Shape,
    model_cfg: ModelConfig,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: Optional[int] = None,
    config: Optional[TransformerConfig] = None,
) -> GPTModel:
    """One GPTModel chunk (this rank's pipeline stage / virtual stage) of the Qwen3 `shape`.

    `config` defaults to ``transformer_config(shape, model_cfg)``. Must run after ``init_distributed`` inside the
    model's layout. The output layer is vocab-parallel (``parallel_output=True``): logits come back sharded over
    tensor-parallel ranks, (s, b, V / tp).
    """
    config = config or transformer_config(shape, model_cfg)
    tp = config.tensor_model_parallel_size
    if shape.vocab_size % tp:
        raise ValueError(
            f"vocab_size {shape.vocab_size} is not divisible by tensor-parallel size {tp}; "
            "use a tp that divides the vocabulary"
        )
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(shape, model_cfg),
        vocab_size=shape.vocab_size,
        max_sequence_length=shape.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=shape.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=int(shape.rope_theta),
        vp_stage=vp_stage,
    )
