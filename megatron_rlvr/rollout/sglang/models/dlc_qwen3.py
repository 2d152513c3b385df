"""Rollout stage, SGLang model: DLC as one SGLang architecture, a Qwen3 policy stack and a Qwen3 memory stack.

Both stacks read the same token ids and positions in one forward pass, so every scheduled sequence advances
policy and memory in lockstep and the sampler sees both models' next-token logits of the same step (docs/ALGORITHMS.md, "DLC":
pi_cal = softmax((z_policy - lam * z_memory) / T)).

KV layout: SGLang keeps one KV pool, indexed by the RadixAttention `layer_id`, with the KV-head count and
head_dim of the top-level config. The policy keeps ids 0..Lp-1 and the memory stack's ids are offset to
Lp..Lp+Lm-1 (`end_layer` tells the pool to allocate Lp+Lm layers). Without the offset the two stacks overwrite
each other's cache and outputs diverge from the second token without any error (shared/SGLANG-NOTES.md).
Because both stacks cache under the same token slots, a radix-cache hit on a prefix reuses the memory stack's
KV exactly as it reuses the policy's: prefix caching stays correct with no extra bookkeeping.

Concurrency (GPU decode): the two stacks only meet at the sampler, so on a CUDA device the memory stack runs on a
second stream, forked at the start of the forward and joined before the logits leave it. Captured in SGLang's
decode CUDA graph, the two stacks become parallel branches, and at small batch (launch-latency bound) the memory
stack's kernels hide behind the policy's. Shared resources that would race are made private to the memory stack:
- SGLang's process-wide "alt" stream, on which every Qwen3 attention layer normalises k during capture: the
  memory stack gets its own (on a shared one the caching allocator can hand a k buffer of one branch to the
  other while it is still being read);
- while the memory branch is enqueued, the triton attention backend's split-KV scratch (`attn_logits`/`attn_lse`,
  one buffer for all layers), allocated from the side stream's pool, and the KV pool's helper stream.
The scratch allocated from the main stream's pool showed up on an H100 as NaN logits; the other two follow from
the same allocator mechanism and were made private before they could show. Overlap is used only where that is
known to be safe: decode batches, SGLang's triton attention backend, tensor-parallel size 1 (with TP > 1 both
branches would issue collectives on one communicator). Elsewhere, and with MEGATRON_RLVR_DLC_OVERLAP=0 in the
environment of the process that starts SGLang, the stacks run one after the other. The outputs must be the same
either way, and equal to a float32 reference token by token: tests/sglang/test_gpu_overlap.py checks both on an
H100 for two small pairs, in captured decode graphs and eagerly.

Captured decode graphs also share SGLang's per-vocab logits output buffer between logits processors; the memory
stack opts out of it (`_memory_logits`), else its logits overwrite the policy's, and the sampler refuses aliased
logits.

Config: config.json is the policy's Qwen3 config (so SGLang sizes everything from it) plus
`dlc_memory_config`, the memory model's own Qwen3 config (it may differ in hidden size, layers, heads, FFN;
it must share vocab_size, head_dim and num_key_value_heads). Weight names are the HF Qwen3 names prefixed by
`policy.` or `memory.` (see megatron_rlvr.rollout.sglang.protocol.dlc_param_names).

Policy only: with `dlc_policy_only: true` instead of `dlc_memory_config` (runs with DLC off) the model has no memory
stack: no memory forward, KV layers or weights, and the memory-logits entry is None, so the same sampler draws
from the policy alone and reports the same per-token statistics. A DLC model whose memory weights the trainer
never pushes would decode a stack of dummy weights for nothing, and after a colocated release (SGLang keeps no
copy of released weights) of undefined ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Iterable, Optional, Tuple

import torch
from torch import nn
from transformers import Qwen3Config

from sglang.srt.distributed import get_pp_group, get_tensor_model_parallel_world_size
from sglang.srt.layers.logits_processor import LogitsMetadata, LogitsProcessorOutput
from sglang.srt.layers.quantization.base_config import QuantizationConfig
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, PPProxyTensors
from sglang.srt.model_executor.forward_context import get_attn_backend, has_forward_context
from sglang.srt.models.qwen3 import Qwen3ForCausalLM
from sglang.srt.utils import add_prefix

from megatron_rlvr.rollout.sglang.protocol import (
    MEMORY_CONFIG_KEY, MEMORY_LOGITS_KEY, MODEL_PREFIXES, POLICY_ONLY_KEY, check_stack_compat,
)

logger = logging.getLogger(__name__)

OVERLAP_ENV = "MEGATRON_RLVR_DLC_OVERLAP"  # "0" runs the memory stack after the policy on one stream


class DLCQwen3ForCausalLM(nn.Module):
    """A Qwen3 policy and a Qwen3 memory model decoded together; logits go to the DLC sampler."""

    def __init__(self, config, quant_config: Optional[QuantizationConfig] = None, prefix: str = "") -> None:
        super().__init__()
        mem_dict = getattr(config, MEMORY_CONFIG_KEY, None)
        policy_only = bool(getattr(config, POLICY_ONLY_KEY, False))
        if not policy_only and not isinstance(mem_dict, dict):
            raise ValueError(
                f"{type(self).__name__} needs `{MEMORY_CONFIG_KEY}` (the memory model's Qwen3 config) or "
                f"`{POLICY_ONLY_KEY}: true` in config.json; build the model folder with "
                "megatron_rlvr.rollout.sglang.build_model_dir"
            )
        if get_pp_group().world_size != 1:
            raise ValueError("DLCQwen3ForCausalLM does not support pipeline parallelism in SGLang; use pp_size=1")
        self.config = config
        self.quant_config = quant_config
        self.policy = Qwen3ForCausalLM(config, quant_config=quant_config, prefix=add_prefix("policy", prefix))
        self.num_policy_layers = config.num_hidden_layers
        # The memory stack never returns input log-probs: it is only needed at the sampled positions.
        self.logits_processor = self.policy.logits_processor
        self._side_stream: Optional[torch.cuda.Stream] = None  # set: the memory stack decodes concurrently
        self.memory_config = self.memory = None
        self.num_memory_layers = 0
        if policy_only:
            return
        memory_config = Qwen3Config(**{k: v for k, v in mem_dict.items() if k not in ("architectures",)})
        check_stack_compat(_shape_dict(config), _shape_dict(memory_config))
        self.memory_config = memory_config
        self.memory = Qwen3ForCausalLM(memory_config, quant_config=quant_config, prefix=add_prefix("memory", prefix))
        self.num_memory_layers = memory_config.num_hidden_layers
        # Shift the memory stack's KV layer ids past the policy's (see the module docstring). Only the
        # RadixAttention id moves: the decoder layers keep their local index for SGLang's per-layer bookkeeping.
        for layer in self.memory.model.layers:
            layer.self_attn.attn.layer_id += self.num_policy_layers
        overlap = os.environ.get(OVERLAP_ENV, "1") != "0" and get_tensor_model_parallel_world_size() == 1
        if overlap and torch.cuda.is_available():
            from sglang.srt.runtime_context import get_stream

            # Streams are created here, at model construction: creating one during CUDA-graph capture fails.
            self._side_stream = get_stream("megatron_rlvr_dlc_memory")
            self._give_memory_its_own_helper_streams()

    def _give_memory_its_own_helper_streams(self) -> None:
        """Replace SGLang's shared "alt" stream in the memory stack's layers with a stream of its own."""
        from sglang.srt.runtime_context import get_stream

        own = None
        for module in self.memory.modules():
            if isinstance(getattr(module, "alt_stream", None), torch.cuda.Stream):
                own = own or get_stream("megatron_rlvr_dlc_memory_alt")
                module.alt_stream = own

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
        return list(self.policy.model.layers) + (list(self.memory.model.layers) if self.memory is not None else [])

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
        side = self._memory_stream(input_ids, forward_batch)
        if self.memory is None:  # policy only: the sampler draws from the policy alone
            out = self.policy(input_ids, positions, forward_batch)
            mem_logits = None
        elif side is None:
            out = self.policy(input_ids, positions, forward_batch)
            with _private_decode_scratch(forward_batch, self.memory_config):
                mem_logits = self._memory_logits(input_ids, positions, forward_batch)
        else:
            main = torch.cuda.current_stream()
            side.wait_stream(main)  # fork: the memory branch depends only on what precedes this forward
            # Stream first: the private scratch must come from the side stream's pool. Allocated on the main
            # stream and freed (on exit) while the side stream still reads it, the caching allocator would hand it
            # to the policy's next allocation on the main stream: a race (NaN logits on an H100).
            with torch.cuda.stream(side), _private_decode_scratch(forward_batch, self.memory_config):
                mem_logits = self._memory_logits(input_ids, positions, forward_batch)
            out = self.policy(input_ids, positions, forward_batch)
            main.wait_stream(side)  # join, before the sampler reads the memory logits
            if not torch.cuda.is_current_stream_capturing():
                mem_logits.record_stream(main)  # made on the side stream, freed after main has read it
        # customized_info survives SGLang's CUDA-graph replay (the runner passes it through unsliced); the DLC
        # sampler slices it to the batch, consumes it and replaces the dict with per-token outputs.
        info = dict(out.customized_info or {})
        info[MEMORY_LOGITS_KEY] = mem_logits  # (B, V), or None: policy only
        out.customized_info = info
        return out

    def _memory_logits(self, input_ids, positions, forward_batch: ForwardBatch) -> torch.Tensor:
        mem_hidden = self.memory.model(input_ids, positions, forward_batch)  # (T, H_mem)
        meta = LogitsMetadata.from_forward_batch(forward_batch)
        # Input log-probs, if requested, are the policy's; the memory only needs next-token rows.
        meta.extend_return_logprob = False
        meta.extend_return_top_logprob = False
        meta.extend_token_ids_logprob = False
        # In a captured decode graph SGLang hands every logits processor one shared output buffer, keyed by vocab
        # size (GraphSharedOutput). Both stacks have the same vocab: writing the memory's logits there would
        # overwrite the policy's (serial) or race with them (overlapped). The memory's logits get their own tensor.
        meta.next_token_logits_buffer = None
        return self.memory.logits_processor(input_ids, mem_hidden, self.memory.lm_head, meta).next_token_logits

    def _memory_stream(self, input_ids: torch.Tensor, forward_batch: ForwardBatch) -> Optional[torch.cuda.Stream]:
        """The side stream for the memory stack, or None where running it concurrently is not known to be safe."""
        if self._side_stream is None or not input_ids.is_cuda or not _has_triton_decode_scratch(forward_batch):
            return None
        return self._side_stream

    # --- weights ------------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Route `policy.<HF name>` / `memory.<HF name>` tensors to the stack's own Qwen3 loader."""
        routed = {p: [] for p in MODEL_PREFIXES}
        for name, tensor in weights:
            head, _, rest = name.partition(".")
            if head == "memory" and self.memory is None:
                raise ValueError(f"weight {name!r} is a memory weight, but this model folder is policy-only "
                                 f"(`{POLICY_ONLY_KEY}`: the run has dlc.enabled=false); push the policy alone")
            if head not in routed or not rest:
                raise ValueError(
                    f"weight {name!r} has no stack prefix; DLC weight names are 'policy.<HF Qwen3 name>' or "
                    "'memory.<HF Qwen3 name>' (megatron_rlvr.rollout.sglang.protocol.dlc_param_names)"
                )
            routed[head].append((rest, tensor))
        for head, items in routed.items():
            if items:
                getattr(self, head).load_weights(items)

    def get_embed_and_head(self):
        return self.policy.get_embed_and_head()


def _attn_backend():
    """The attention backend that RadixAttention layers of this forward call (SGLang's forward context)."""
    return get_attn_backend() if has_forward_context() else None


def _has_triton_decode_scratch(forward_batch: ForwardBatch) -> bool:
    """A decode batch on SGLang's triton backend, whose split-KV scratch _private_decode_scratch replaces."""
    backend = _attn_backend()
    # By class name: subclasses (e.g. the sliding-window / speculative variants) keep other shared state.
    if not forward_batch.forward_mode.is_decode() or type(backend).__name__ != "TritonAttnBackend":
        return False
    meta = getattr(backend, "forward_metadata", None)
    return (getattr(backend, "dcp_size", 1) == 1 and meta is not None and meta.attn_logits is not None
            and meta.swa_attn_logits is None)


@contextlib.contextmanager
def _private_decode_scratch(forward_batch: ForwardBatch, memory_config):
    """While the memory stack is enqueued: its own split-KV scratch and no shared KV-store helper stream.

    The triton backend reuses one attn_logits / attn_lse buffer for every layer, which is safe only while
    layers run one after another; with overlap the policy's layers run concurrently with these. The private
    buffer is sized by the memory's own query heads, so it is used on the serial path too: a memory with more
    query heads than the policy would overflow the policy-sized one. Allocated per forward: under CUDA-graph
    capture that memory belongs to the graph and is reused by every replay. A no-op for other batches/backends.
    """
    if not _has_triton_decode_scratch(forward_batch):
        yield
        return
    backend = _attn_backend()
    pool = backend.token_to_kv_pool
    meta = backend.forward_metadata
    rows, _, splits, dv = meta.attn_logits.shape
    heads = memory_config.num_attention_heads // get_tensor_model_parallel_world_size()
    private = dataclasses.replace(
        meta, attn_logits=meta.attn_logits.new_empty((rows, heads, splits, dv)),
        attn_lse=meta.attn_lse.new_empty((rows, heads, splits)))
    alt = getattr(pool, "alt_stream", None)
    backend.forward_metadata = private
    if alt is not None:
        pool.alt_stream = None  # one helper stream shared by both branches would chain them together
    try:
        yield
    finally:
        backend.forward_metadata = meta
        if alt is not None:
            pool.alt_stream = alt


def _shape_dict(cfg) -> dict:
    return {k: getattr(cfg, k, None) for k in ("vocab_size", "head_dim", "num_key_value_heads", "hidden_size",
                                                "num_attention_heads")}


EntryClass = DLCQwen3ForCausalLM
