"""Qwen3 family, live models: stream a (TP/PP/VPP-sharded) Megatron-Core Qwen3 model as full Hugging Face tensors.

The weight push to rollout engines and the end-of-run export both read the training model through this module, and
it goes through the same name map as the offline converters (:mod:`megatron_rlvr.qwen3.names`).

Where each rank's piece of a logical tensor sits is read from the model's own ``sharded_state_dict()`` (global
shape, global offset and layer index of every local shard, Megatron's swiglu factory for linear_fc1), the metadata
dist-checkpointing writes, so nothing about Megatron's sharding is re-derived here.

Collective contract: every rank of the model's tensor- and pipeline-parallel groups must iterate the stream to the
end, in lockstep (each tensor is gathered over TP on its owning stage, then broadcast over PP). Every such rank
receives the identical full stream; data-parallel replicas gather independently (their weights are equal). Memory:
one logical tensor (and its HF pieces) at a time beyond the model itself.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist

from megatron_rlvr.qwen3 import names as qwen3_map
from megatron_rlvr.qwen3.shapes import Qwen3Shape


def unwrap_model(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    from megatron.core.models.gpt import GPTModel

    while not isinstance(chunk, GPTModel):
        if not hasattr(chunk, "module"):
            raise TypeError(f"expected a megatron GPTModel (possibly wrapped), got {type(chunk).__name__}")
        chunk = chunk.module
    return chunk


def local_shards(model_chunks: Iterable[torch.nn.Module]) -> dict[str, list]:
    """Logical Megatron name -> this rank's ShardedTensors of it (linear_fc1 gives two: gate and up part).

    The ShardedTensors' ``data`` are views of the live parameters, so writing into them writes the model.
    """
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    out: dict[str, list] = {}
    for chunk in model_chunks:
        sharded = unwrap_model(chunk).sharded_state_dict()
        apply_factories(sharded)
        for sh in nested_values(sharded):
            if not isinstance(sh, ShardedTensor):
                continue  # ShardedObjects (_extra_state) carry no weights
            if sh.flattened_range is not None:
                raise ValueError(f"{sh.key}: flattened shards only occur in optimizer states, not in a model")
            layer = sh.global_offset[0] if sh.prepend_axis_num == 1 else None
            if sh.prepend_axis_num > 1:
                raise ValueError(f"{sh.key}: unexpected {sh.prepend_axis_num} prepended axes (expert layers?)")
            name = qwen3_map.logical_name(sh.key, layer)
            qwen3_map.resolve_mcore(name)  # an unmapped weight must fail loudly, never be dropped
            out.setdefault(name, []).append(sh)
    return out


def _region(sh) -> tuple[slice, ...]:
    """Index of a local shard inside the logical tensor (without the layer axis)."""
    offsets = sh.global_offset[sh.prepend_axis_num:]
    return tuple(slice(o, o + n) for o, n in zip(offsets, sh.local_shape))


def _gather_tp(shards: list, full_shape: tuple[int, ...], group) -> torch.Tensor:
    """Assemble the logical tensor from every TP rank's shards (same shard count and shapes on each rank)."""
    first = shards[0].data
    full = torch.empty(full_shape, dtype=first.dtype, device=first.device)
    world = dist.get_world_size(group) if group is not None else 1
    for sh in shards:
        if world == 1:
            full[_region(sh)] = sh.data
            continue
        data = sh.data.contiguous()
        pieces = [torch.empty_like(data) for _ in range(world)]
        dist.all_gather(pieces, data, group=group)
        offs = torch.tensor(sh.global_offset[sh.prepend_axis_num:], dtype=torch.int64, device=data.device)
        all_offs = [torch.empty_like(offs) for _ in range(world)]
        dist.all_gather(all_offs, offs, group=group)
        for piece, o in zip(pieces, all_offs):  # replicated tensors (norms) land on the same region each time
            full[tuple(slice(a, a + n) for a, n in zip(o.tolist(), piece.shape))] = piece
    return full


def _groups(model_chunks: list) -> tuple[Optional[object], Optional[object]]:
    if not dist.is_initialized():
        return None, None
    pgs = unwrap_model(model_chunks[0]).pg_collection
    return pgs.tp, pgs.pp


def export_hf_tensors(
    model_chunks: Iterable[torch.nn.Module],
    shape: Qwen3Shape,
    dtype: Optional[torch.dtype] = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (Hugging Face name, full tensor) for the whole model, embedding -> layers -> norm -> lm_head.

    `model_chunks` are this rank's model chunks (one per virtual pipeline stage; DDP-wrapped is fine). Tensors are
    on the model's device, all in `dtype`, by default the word embeddings' dtype (Megatron's local spec keeps some
    norms in fp32 next to bf16 weights). Collective: see the module docstring.
    """
    chunks = list(model_chunks)
    tp_group, pp_group = _groups(chunks)
    local = local_shards(chunks)
    names = qwen3_map.mcore_names(shape)
    unexpected = sorted(set(local) - set(names))
    if unexpected:
        raise ValueError(f"the model holds tensors the {shape} map does not expect: {unexpected[:5]} "
                         "(is the shape the one the model was built with?)")
    pp_world = dist.get_world_size(pp_group) if pp_group is not None else 1
    device = next(iter(local.values()))[0].data.device if local else torch.device("cpu")
    # Which pipeline rank owns each tensor (the first holding it: with tied embeddings the last stage holds a
    # replica of the embedding), and its dtype, agreed once.
    mine = {n: shs[0].data.dtype for n, shs in local.items()}
    if pp_world > 1:
        per_stage: list = [None] * pp_world
        dist.all_gather_object(per_stage, mine, group=pp_group)
    else:
        per_stage = [mine]
    pp_rank = dist.get_rank(pp_group) if pp_group is not None else 0
    dtype = dtype or next(held[names[0]] for held in per_stage if names[0] in held)  # names[0]: the embedding
    for name in names:
        owner = next((r for r, held in enumerate(per_stage) if name in held), None)
        if owner is None:
            raise ValueError(f"no pipeline stage holds {name}; the model does not match {shape}")
        full_shape = qwen3_map.mcore_shape(shape, name)
        if owner == pp_rank:
            full = _gather_tp(local[name], full_shape, tp_group)
        else:
            full = torch.empty(full_shape, dtype=per_stage[owner][name], device=device)
        if pp_world > 1:
            dist.broadcast(full, src=dist.get_global_rank(pp_group, owner), group=pp_group)
        for hf_name, tensor in qwen3_map.mcore_to_hf(shape, name, full):
            yield hf_name, tensor.to(dtype)
        del full


def load_hf_tensors(
    model_chunks: Iterable[torch.nn.Module],
    shape: Qwen3Shape,
    get_hf: Callable[..., torch.Tensor],
) -> None:
    """Inverse of :func:`export_hf_tensors` for this rank: fill its shards from Hugging Face tensors.

    ``get_hf(hf_name)`` returns a full HF tensor, ``get_hf(hf_name, index)`` only ``tensor[index]`` (safetensors
    reads just that part). Tensors that are plain renames (embeddings, lm_head, o_proj, down_proj, norms) are read
    as this rank's slice in blocks of rows (<= 64 MiB), so no rank ever holds a whole embedding matrix; the fused
    ones (QKV, gate/up: one layer's worth) are assembled in full, then sliced. Not collective.
    """
    chunks = list(model_chunks)
    local = local_shards(chunks)
    with torch.no_grad():
        for name in qwen3_map.mcore_names(shape):
            if name not in local:
                continue
            rule, _ = qwen3_map.resolve_mcore(name)
            if rule.split == "copy":
                (hf_name,) = qwen3_map.hf_sources(name)
                for sh in local[name]:
                    _copy_in_row_blocks(sh.data, _region(sh), hf_name, get_hf)
                continue
            full = qwen3_map.hf_to_mcore(shape, name, get_hf)
            for sh in local[name]:
                sh.data.copy_(full[_region(sh)])
            del full


_BLOCK_BYTES = 64 * 1024**2


def _copy_in_row_blocks(dest: torch.Tensor, region: tuple[slice, ...], hf_name: str, get_hf) -> None:
    rows = region[0]
    row_bytes = dest[0].numel() * dest.element_size() if dest.dim() > 1 else dest.element_size()
    step = max(1, _BLOCK_BYTES // row_bytes)
    for start in range(rows.start, rows.stop, step):
        stop = min(start + step, rows.stop)
        dest[start - rows.start:stop - rows.start].copy_(get_hf(hf_name, (slice(start, stop),) + region[1:]))
