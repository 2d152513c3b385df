"""Rollout stage, SGLang model: DLC as one SGLang architecture, a Qwen3 policy stack and a Qwen3 memory stack.

Both stacks read the same token ids and positions in one forward pass, so every scheduled sequence advances
policy and memory in lockstep and the sampler sees both models' next-token logits of the same step (SPEC 2.5:
pi_cal = softmax((z_policy - lam * z_memory) / T)).

KV layout: SGLang keeps one KV pool, indexed by the RadixAttention `layer_id`, with the KV-head count and
head_dim of the top-level config. The policy keeps ids 0..Lp-1 and the memory stack's ids are offset to
Lp..Lp+Lm-1 (`end_layer` tells the pool to allocate Lp+Lm layers). Without the offset the two stacks overwrite
each other's cache and outputs diverge from the second token without any error (shared/SGLANG-NOTES.md).
Because both stacks cache under the same token slots, a radix-cache hit on a prefix reuses the memory stack's
KV exactly as it reuses the policy's: prefix caching stays correct with no extra bookkeeping.

Config: config.json is the policy's Qwen3 config (so SGLang sizes everything from it) plus
`dlc_memory_config`, the memory model's own Qwen3 config (it may differ in hidden size, layers, heads, FFN;
it must share vocab_size, head_dim and num_key_value_heads). Weight names are the HF Qwen3 names prefixed by
`policy.` or `memory.` (see megatron_rlvr.rollout.sglang.weights).
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Tuple

import torch
from torch import nn
from transformers import Qwen3Config

from sglang.srt.distributed import get_pp_group
from sglang.srt.layers.logits_processor import LogitsMetadata, LogitsProcessorOutput
from sglang.srt.layers.quantization.base_config import QuantizationConfig
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, PPProxyTensors
from sglang.srt.models.qwen3 import Qwen3ForCausalLM
from sglang.srt.utils import add_prefix

from megatron_rlvr.rollout.sglang.protocol import (
    MEMORY_CONFIG_KEY, MEMORY_LOGITS_KEY, MODEL_PREFIXES, check_stack_compat,
)

logger = logging.getLogger(__name__)


class DLCQwen3ForCausalLM(nn.Module):
    """A Qwen3 policy and a Qwen3 memory model decoded together; logits go to the DLC sampler."""

    def __init__(self, config, quant_config: Optional[QuantizationConfig] = None, prefix: str = "") -> None:
        super().__init__()
        mem_dict = getattr(config, MEMORY_CONFIG_KEY, None)
        if not isinstance(mem_dict, dict):
            raise ValueError(
                f"{type(self).__name__} needs `{MEMORY_CONFIG_KEY}` (the memory model's Qwen3 config) in config.json; "
                "build the model folder with megatron_rlvr.rollout.sglang.build_model_dir"
            )
        if get_pp_group().world_size != 1:
            raise ValueError("DLCQwen3ForCausalLM does not support pipeline parallelism in SGLang; use pp_size=1")
        memory_config = Qwen3Config(**{k: v for k, v in mem_dict.items() if k not in ("architectures",)})
        check_stack_compat(_shape_dict(config), _shape_dict(memory_config))
        self.config = config
        self.memory_config = memory_config
        self.quant_config = quant_config
        self.policy = Qwen3ForCausalLM(config, quant_config=quant_config, prefix=add_prefix("policy", prefix))
        self.memory = Qwen3ForCausalLM(memory_config, quant_config=quant_config, prefix=add_prefix("memory", prefix))
        self.num_policy_layers = config.num_hidden_layers
        self.num_memory_layers = memory_config.num_hidden_layers
        # Shift the memory stack's KV layer ids past the policy's (see the module docstring). Only the
        # RadixAttention id moves: the decoder layers keep their local index for SGLang's per-layer bookkeeping.
        for layer in self.memory.model.layers:
            layer.self_attn.attn.layer_id += self.num_policy_layers
        # The memory stack never returns input log-probs: it is only needed at the sampled positions.
        self.logits_processor = self.policy.logits_processor

    # --- what SGLang's model runner reads ------------------------------------------------------------------
    @property
    def start_layer(self) -> int:
        return 0

    @property
    def end_layer(self) -> int:
        # Sizes the KV pool: policy layers, then memory layers.
        return self.num_policy_layers + self.num_memory_layers

    @property
    def layers(self) -> list:
        """Decoder layers of both stacks in KV-layer-id order (piecewise CUDA graphs index attention by id)."""
        return list(self.policy.model.layers) + list(self.memory.model.layers)

    def get_input_embeddings(self) -> nn.Module:
        return self.policy.get_input_embeddings()

    # --- forward -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: Optional[torch.Tensor] = None,
        get_embedding: bool = False,
        pp_proxy_tensors: Optional[PPProxyTensors] = None,
    ) -> LogitsProcessorOutput:
        if input_embeds is not None or get_embedding:
            raise ValueError("DLCQwen3ForCausalLM generates from token ids only (no input_embeds / embeddings)")
        out = self.policy(input_ids, positions, forward_batch)
        mem_hidden = self.memory.model(input_ids, positions, forward_batch)  # (T, H_mem)
        meta = LogitsMetadata.from_forward_batch(forward_batch)
        # Input log-probs, if requested, are the policy's; the memory only needs next-token rows.
        meta.extend_return_logprob = False
        meta.extend_return_top_logprob = False
        meta.extend_token_ids_logprob = False
        mem_out = self.memory.logits_processor(input_ids, mem_hidden, self.memory.lm_head, meta)
        # customized_info survives SGLang's CUDA-graph replay (the runner passes it through unsliced); the DLC
        # sampler slices it to the batch, consumes it and replaces the dict with per-token outputs.
        info = dict(out.customized_info or {})
        info[MEMORY_LOGITS_KEY] = mem_out.next_token_logits  # (B, V)
        out.customized_info = info
        return out

    # --- weights ------------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Route `policy.<HF name>` / `memory.<HF name>` tensors to the stack's own Qwen3 loader."""
        routed = {p: [] for p in MODEL_PREFIXES}
        for name, tensor in weights:
            head, _, rest = name.partition(".")
            if head not in routed or not rest:
                raise ValueError(
                    f"weight {name!r} has no stack prefix; DLC weight names are 'policy.<HF Qwen3 name>' or "
                    "'memory.<HF Qwen3 name>' (megatron_rlvr.rollout.sglang.weights.prefixed)"
                )
            routed[head].append((rest, tensor))
        for head, items in routed.items():
            if items:
                getattr(self, head).load_weights(items)

    def get_embed_and_head(self):
        return self.policy.get_embed_and_head()


def _shape_dict(cfg) -> dict:
    return {k: getattr(cfg, k, None) for k in ("vocab_size", "head_dim", "num_key_value_heads", "hidden_size",
                                                "num_attention_heads")}


EntryClass = DLCQwen3ForCausalLM
