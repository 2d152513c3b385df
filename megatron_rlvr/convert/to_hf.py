"""Conversion stage, export: Megatron dist-checkpoint (any TP/PP) or live model -> Hugging Face Qwen3 folder.

Offline (`megatron-rlvr convert to-hf`): one process reads the checkpoint layer by layer (dist_ckpt), maps every
logical tensor through the name map, and streams the Hugging Face tensors into safetensors shards (hf_io). Peak
memory: one layer's full tensors + one output shard (``max_shard_bytes``) + the runtime.

Live (end of training, or any caller holding the model): :func:`save_hf_from_live` writes the same folder from the
stream of :func:`megatron_rlvr.qwen3.live.export_hf_tensors`, the stream the rollout weight push uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from megatron_rlvr.checkpoint.store import INTEGRITY, LATEST, iter_dir_name, read_latest, verify_checkpoint
from megatron_rlvr.convert import ConversionError
from megatron_rlvr.convert.dist_ckpt import DistCheckpointReader
from megatron_rlvr.convert.hf_io import DEFAULT_MAX_SHARD_BYTES, HFFolderWriter, atomic_output_dir, tokenizer_files_in
from megatron_rlvr.qwen3 import names as qwen3_map
from megatron_rlvr.qwen3.shapes import Qwen3Shape

MODEL_NAMES = ("policy", "memory")


def resolve_model_dir(ckpt: str | Path, model: str = "policy", step: Optional[int] = None) -> tuple[Path, Path]:
    """(model folder, iter folder) for `ckpt`: a run folder or checkpoints folder (with `step` or `latest`), an
    iter folder holding ``<model>/``, or a model folder itself (e.g. the output of ``convert from-hf``)."""
    base = Path(ckpt).expanduser()
    if not base.is_dir():
        raise ConversionError(f"--ckpt {base} does not exist or is not a folder")
    if step is not None:
        tries = [base / "checkpoints" / iter_dir_name(step), base / iter_dir_name(step)]
        found = next((t for t in tries if t.is_dir()), None)
        if found is None:
            raise ConversionError(f"--step {step}: neither {tries[0]} nor {tries[1]} exists")
        it = found
    else:
        it = base
        for folder in (base, base / "checkpoints"):
            if (folder / LATEST).is_file():
                named = read_latest(folder, lambda _msg: None)
                if named is None:
                    raise ConversionError(f"{folder / LATEST} is damaged (it does not name an iter_XXXXXXX folder); "
                                          "pass --step N or an iter folder")
                it = folder / named
                break
    if (it / model / "metadata.json").is_file():
        _check_complete(it, model)
        return it / model, it
    if (it / "metadata.json").is_file():
        return it, it
    if (it / "trainer_state.pt").is_file() or any((it / m).is_dir() for m in MODEL_NAMES):
        raise ConversionError(f"{it} has no '{model}' model checkpoint (is --model right? it holds "
                              f"{sorted(p.name for p in it.iterdir())})")
    raise ConversionError(f"{it} is not a checkpoint: expected an iter_XXXXXXX folder, a run's checkpoints folder "
                          "(with a 'latest' file), a run folder with --step, or a model folder with metadata.json")


def _check_complete(it: Path, model: str) -> None:
    """A trainer checkpoint is exported only once finished (never a `.tmp` folder) and, when it has an integrity
    record, only if its files match it."""
    if ".tmp" in it.name:
        raise ConversionError(f"{it} is an unfinished checkpoint (its write never completed); export a finished "
                              "iter_XXXXXXX folder instead")
    if (it / INTEGRITY).is_file():
        problems = verify_checkpoint(it, only=model)
        if problems:
            raise ConversionError(f"checkpoint {it} is damaged: {'; '.join(problems[:3])}; export an earlier "
                                  "checkpoint with --step N")


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    model: str = "policy",
    step: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Export one model of a trainer checkpoint to a Hugging Face folder `out` (atomic); returns `out`.

    Every tensor is written in `dtype`, by default the dtype of the word embeddings (Megatron's local layer spec
    keeps some norms in fp32 next to bf16 weights; Hugging Face folders use one dtype).

    Needs no process group: any single rank of a running job may call it alone.
    """
    model_dir, it = resolve_model_dir(ckpt, model, step)
    reader = DistCheckpointReader(model_dir)
    dtype = dtype or reader.dtype()
    with atomic_output_dir(Path(out), overwrite) as tmp:
        writer = HFFolderWriter(tmp, reader.shape, max_shard_bytes)
        for name, tensor in reader.iter_logical():
            for hf_name, piece in qwen3_map.mcore_to_hf(reader.shape, name, tensor):
                writer.add(hf_name, piece.to(dtype))
            del tensor
        writer.finish(tokenizer_files_in(it / "tokenizer"))
    return Path(out).expanduser().absolute()


def save_hf_from_live(
    model_chunks: Iterable[torch.nn.Module],
    shape: Qwen3Shape,
    out: str | Path,
    tokenizer_dir: Optional[str | Path] = None,
    dtype: Optional[torch.dtype] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Optional[Path]:
    """Write a live (sharded) model as a Hugging Face folder. Collective over the model's TP/PP ranks (all must
    call it); global rank 0 writes and returns `out`, the others return None."""
    from megatron_rlvr.qwen3.live import export_hf_tensors

    stream = export_hf_tensors(model_chunks, shape, dtype)
    if dist.is_initialized() and dist.get_rank() != 0:
        for _ in stream:
            pass
        return None
    out = Path(out).expanduser().absolute()
    try:
        with atomic_output_dir(out, overwrite) as tmp:
            writer = HFFolderWriter(tmp, shape, max_shard_bytes)
            for hf_name, tensor in stream:
                writer.add(hf_name, tensor)
            writer.finish(tokenizer_files_in(Path(tokenizer_dir) if tokenizer_dir else None))
    except BaseException:
        for _ in stream:  # the other ranks are inside the stream's collectives: let them finish
            pass
        raise
    return out
