"""Conversion stage, Megatron side: read a dist-checkpoint of a Qwen3 model one layer at a time.

A model folder written by the trainer (``TrainableModel.save_checkpoint``) or by ``convert from-hf`` holds a
megatron.core dist-checkpoint (torch_dist backend) plus ``model_info.json`` (preset name and Qwen3Shape fields).
Whatever TP/PP it was saved with, its global tensors are the logical ones (layer-stacked: (L, ...)), so one process
reads any layout: each layer is requested as its slice of the stacked tensors, and torch DCP reads only the
storage chunks that overlap it. No process group is needed, so one rank of a running job can export on its own.

Everything is validated before the first tensor is read: the model info names a Qwen3 shape, every tensor the shape
implies exists with the right global shape, and every storage file the model's tensors live in exists and is long
enough (a missing or truncated ``*.distcp`` file fails here, not halfway through an export).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_rlvr.convert import ConversionError
from megatron_rlvr.qwen3 import names as qwen3_map
from megatron_rlvr.qwen3.model_info import MODEL_INFO, read_model_info
from megatron_rlvr.qwen3.shapes import Qwen3Shape

# Top-level modules of a GPTModel's checkpoint keys (optimizer states live under "optimizer.").
_MODEL_KEY_PREFIXES = ("embedding.", "decoder.", "output_layer.")


class _SliceLoadPlanner(DefaultLoadPlanner):
    """torch DCP load planner that reads, for each key, the region of the global tensor at ``offsets[key]`` with
    the shape of the destination tensor.

    Megatron's own load path builds torch ShardedTensors whose other grid cells are placed on "another rank", which
    does not exist in a one-process world; DCP's planner interface states "this region of that tensor" directly.
    """

    def __init__(self, offsets: dict[str, tuple[int, ...]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.offsets = offsets

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, tensor in self.state_dict.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(self.offsets[key]), sizes=tensor.shape)
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        # dest_offsets are relative to the requested region, i.e. to the destination tensor itself
        tensor = self.state_dict[read_item.dest_index.fqn]
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            tensor = tensor.narrow(dim, start, length)
        return tensor


class DistCheckpointReader:
    """Validated, layer-by-layer reader of a Qwen3 dist-checkpoint model folder (needs no process group)."""

    def __init__(self, model_dir: Path, shape: Optional[Qwen3Shape] = None):
        self.dir = Path(model_dir)
        if not (self.dir / "metadata.json").is_file():
            raise ConversionError(f"{self.dir} is not a Megatron dist-checkpoint (no metadata.json)")
        backend = json.loads((self.dir / "metadata.json").read_text()).get("sharded_backend")
        if backend != "torch_dist":
            raise ConversionError(f"{self.dir}: dist-checkpoint backend {backend!r} is not supported (torch_dist is)")
        info = read_model_info(self.dir)
        self.preset, info_shape = info.preset, info.shape
        self.shape = shape or info_shape
        try:  # megatron's torch_dist backend stores each ShardedTensor under its key as a DCP tensor
            self._dcp_metadata = FileSystemReader(str(self.dir)).read_metadata()
        except Exception as err:  # a missing or damaged .metadata file surfaces as IO / pickle errors
            raise ConversionError(f"cannot read the tensor metadata of {self.dir} ({err!r}); the checkpoint is "
                                  "damaged or incomplete") from None
        self.metadata = {k: v for k, v in self._dcp_metadata.state_dict_metadata.items()
                         if isinstance(v, TensorStorageMetadata)}
        self._validate_shapes()
        self._validate_storage()

    def _expected(self) -> dict[str, tuple[tuple[int, ...], Optional[int]]]:
        """Checkpoint key -> (global shape, None); layer keys are stacked: (L, *logical shape)."""
        out = {}
        for name in qwen3_map.mcore_names(self.shape):
            key, layer = qwen3_map.checkpoint_key(name)
            full = qwen3_map.mcore_shape(self.shape, name)
            out[key] = ((self.shape.num_hidden_layers, *full) if layer is not None else full, layer)
        return out

    def _validate_shapes(self) -> None:
        expected = self._expected()
        model_keys = [k for k in self.metadata if k.startswith(_MODEL_KEY_PREFIXES)]
        unexpected = sorted(k for k in model_keys if k not in expected)
        if unexpected:
            raise ConversionError(
                f"{self.dir}: the checkpoint holds {unexpected[:3]}, which {MODEL_INFO} (preset {self.preset!r}, "
                f"tied={self.shape.tie_word_embeddings}) does not have: the model info does not match the checkpoint")
        for key, (want, _) in expected.items():
            meta = self.metadata.get(key)
            if meta is None:
                raise ConversionError(
                    f"{self.dir}: tensor {key} is missing; {MODEL_INFO} (preset {self.preset!r}, tied="
                    f"{self.shape.tie_word_embeddings}) does not match this checkpoint")
            if tuple(meta.size) != want:
                raise ConversionError(
                    f"{self.dir}: {key} has shape {tuple(meta.size)} but {MODEL_INFO} (preset "
                    f"{self.preset!r}) implies {want}: the model info does not match the checkpoint")

    def _validate_storage(self) -> None:
        storage = self._dcp_metadata.storage_data
        keys = set(self._expected())
        need: dict[str, int] = {}
        for index, info in storage.items():
            if index.fqn in keys:
                need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
        for rel, end in sorted(need.items()):
            path = self.dir / rel
            if not path.is_file():
                raise ConversionError(f"{path} is missing: the checkpoint is incomplete (copy it again)")
            if path.stat().st_size < end:
                raise ConversionError(f"{path} is truncated ({path.stat().st_size} of at least {end} bytes): the "
                                      "checkpoint is incomplete (copy it again)")

    def dtype(self) -> torch.dtype:
        return self.metadata["embedding.word_embeddings.weight"].properties.dtype

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Full logical tensors `names` (Megatron logical names), read in one call without any process group."""
        state: dict[str, torch.Tensor] = {}
        offsets: dict[str, tuple[int, ...]] = {}
        for name in names:
            key, layer = qwen3_map.checkpoint_key(name)
            size, dtype = tuple(self.metadata[key].size), self.metadata[key].properties.dtype
            if layer is None:
                state[key] = torch.empty(size, dtype=dtype)
                offsets[key] = (0,) * len(size)
            else:  # this layer's slice of the stacked tensor, as a (1, ...) chunk at offset (layer, 0, ...)
                state[key] = torch.empty((1, *size[1:]), dtype=dtype)
                offsets[key] = (layer,) + (0,) * (len(size) - 1)
        with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process is the intent here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=FileSystemReader(str(self.dir)), planner=_SliceLoadPlanner(offsets),
                     no_dist=True)
        out = {}
        for name in names:
            key, layer = qwen3_map.checkpoint_key(name)
            out[name] = state.pop(key)[0] if layer is not None else state.pop(key)
        return out

    def iter_logical(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(logical name, full tensor) for the whole model in streaming order, one layer in memory at a time."""
        names = qwen3_map.mcore_names(self.shape)
        groups: list[list[str]] = []
        for name in names:
            _, layer = qwen3_map.resolve_mcore(name)
            if groups and layer is not None and qwen3_map.resolve_mcore(groups[-1][0])[1] == layer:
                groups[-1].append(name)
            else:
                groups.append([name])
        for group in groups:
            tensors = self.load(group)
            for name in group:
                yield name, tensors.pop(name)
