"""Conversion stage, Hugging Face side: read and write Qwen3 folders (config.json + safetensors shards + index).

Writing is atomic and streaming: tensors arrive one by one, a shard is flushed to disk as soon as it is full (so at
most one shard is held), and the folder is assembled in a hidden temporary folder next to the destination that is
renamed into place only when complete; on any error it is deleted. Reading is lazy (one tensor at a time through
``safetensors.safe_open``) after the whole folder was validated up front, so bad input fails before any output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import torch

from megatron_rlvr.convert import ConversionError
from megatron_rlvr.qwen3 import names as qwen3_map
from megatron_rlvr.qwen3.hf import hf_config
from megatron_rlvr.qwen3.shapes import Qwen3Shape

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# Tokenizer files of a Hugging Face folder (besides tokenizer*), carried along by both converters.
TOKENIZER_FILES = {"vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_dead_tmp_dirs(out: Path) -> list[Path]:
    """Remove `.<name>.tmp-<host>-<pid>-*` / `.old-` folders next to `out` left by a dead process of this host (kill -9
    during a conversion or an export); folders of live processes and of other hosts are left alone."""
    host, removed = socket.gethostname(), []
    for kind in ("tmp", "old"):
        for p in out.parent.glob(f".{out.name}.{kind}-*"):
            parts = p.name[len(f".{out.name}.{kind}-"):].rsplit("-", 2)
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `out`; on success rename it to `out`, on any error delete it. The
    folder's name carries host and pid, so the next writer of `out` removes it if this process was killed."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not overwrite:
        raise ConversionError(f"output folder {out} already exists; choose a new --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_tmp_dirs(out)
    owner = f"{socket.gethostname()}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{owner}", dir=out.parent))
    try:
        yield tmp
        if out.exists():  # overwrite: swap in the new folder first, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{owner}", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class HFFolderReader:
    """Lazy reader of a validated Hugging Face Qwen3 folder's weights."""

    def __init__(self, hf_dir: Path, shape: Qwen3Shape):
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        self.shape = shape
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ConversionError(f"{index} is not a safetensors index ({err!r})") from None
        elif (self.dir / SINGLE_NAME).is_file():
            weight_map = None
        else:
            raise ConversionError(f"{self.dir} has neither {INDEX_NAME} nor {SINGLE_NAME}: no safetensors weights")
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_NAME]
        missing = [f for f in files if not (self.dir / f).is_file()]
        if missing:
            raise ConversionError(f"{self.dir}: weight shard(s) {missing} listed in {INDEX_NAME} are missing")
        self.location: dict[str, str] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for fname in files:
            try:
                with safe_open(str(self.dir / fname), framework="pt") as f:
                    for key in f.keys():
                        sl = f.get_slice(key)
                        shapes[key] = tuple(sl.get_shape())
                        self.dtypes[key] = _SAFETENSORS_DTYPES.get(sl.get_dtype(), None)
                        self.location[key] = fname
            except Exception as err:  # safetensors raises its own error type for damaged files
                raise ConversionError(f"{self.dir / fname} is damaged or truncated ({err}); re-download it") from None
        if weight_map:
            for key, fname in weight_map.items():
                if self.location.get(key) != fname:
                    raise ConversionError(f"{INDEX_NAME} says {key} is in {fname}, but that file does not hold it")
        expected = qwen3_map.hf_shapes(shape)
        absent = [k for k in expected if k not in shapes]
        ignorable = {"lm_head.weight"} if shape.tie_word_embeddings else set()  # some tied exports still save it
        extra = sorted(k for k in shapes if k not in expected and k not in ignorable)
        if absent or extra:
            raise ConversionError(
                f"{self.dir}: the weights do not match config.json ({shape.num_hidden_layers} layers, tied="
                f"{shape.tie_word_embeddings}): missing {absent[:5]}{'...' if len(absent) > 5 else ''}, "
                f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
        wrong = [(k, shapes[k], v) for k, v in expected.items() if shapes[k] != v]
        if wrong:
            k, got, want = wrong[0]
            raise ConversionError(f"{self.dir}: {k} has shape {got} but config.json implies {want} "
                                  f"({len(wrong)} mismatching tensors): config.json does not match the weights")
        used = {self.dtypes[k] for k in expected}
        if len(used) != 1 or None in used:
            raise ConversionError(f"{self.dir}: weights use dtypes {sorted(map(str, used))}; expected one float dtype")
        self.dtype: torch.dtype = used.pop()
        if "lm_head.weight" in ignorable and "lm_head.weight" in shapes:
            if not torch.equal(self.get("lm_head.weight"), self.get("model.embed_tokens.weight")):
                raise ConversionError(
                    f"{self.dir}: config.json ties the embeddings (tie_word_embeddings=true) but lm_head.weight "
                    "differs from model.embed_tokens.weight: config.json does not match the weights")

    def get(self, name: str, index: Optional[tuple[slice, ...]] = None) -> torch.Tensor:
        """Tensor `name`, or only ``tensor[index]`` (safetensors reads just those bytes)."""
        from safetensors import safe_open

        # Opened per call: safetensors memory-maps the file, and pages read through a kept-open handle stay
        # mapped (resident) until it closes, which would add the whole input's size to the peak memory.
        with safe_open(str(self.dir / self.location[name]), framework="pt") as f:
            tensor = f.get_tensor(name) if index is None else f.get_slice(name)[index]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConversionError(f"{self.dir / self.location[name]}: {name} holds NaN or inf values; the weights are "
                                  "damaged (or were exported from a diverged run): re-download or re-export them")
        return tensor

    def tokenizer_files(self) -> list[Path]:
        return [p for p in sorted(self.dir.iterdir()) if p.is_file() and _is_tokenizer_file(p)]


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _is_tokenizer_file(p: Path) -> bool:
    return p.name in TOKENIZER_FILES or p.name.startswith("tokenizer")


class HFFolderWriter:
    """Write a Hugging Face Qwen3 folder into `folder` (a temporary folder from :func:`atomic_output_dir`).

    ``add`` buffers tensors until the next one would overflow `max_shard_bytes`, then writes the buffer as one
    safetensors shard; ``finish`` names the shards model-0000k-of-0000n, writes the index, config.json,
    generation_config.json and copies the tokenizer files.
    """

    def __init__(self, folder: Path, shape: Qwen3Shape, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.folder = Path(folder)
        self.shape = shape
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[list[str]] = []
        self._total = 0
        self._dtype: Optional[torch.dtype] = None
        self._expected = qwen3_map.hf_shapes(shape)
        self._seen: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._expected or name in self._seen:
            raise ValueError(f"{name}: not a tensor of this Qwen3 shape, or written twice")
        if tuple(tensor.shape) != self._expected[name]:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)}, expected {self._expected[name]}")
        self._dtype = self._dtype or tensor.dtype
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.detach().to("cpu").contiguous()
        self._buffer_bytes += nbytes
        self._total += nbytes
        self._seen.add(name)

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self._buffer, str(self.folder / f".shard{len(self._shards):05d}"), metadata={"format": "pt"})
        self._shards.append(list(self._buffer))
        self._buffer, self._buffer_bytes = {}, 0

    def finish(self, tokenizer_files: list[Path] = ()) -> None:
        missing = [k for k in self._expected if k not in self._seen]
        if missing:
            raise ValueError(f"the tensor stream ended without {missing[:5]}")
        if self._buffer:
            self._flush()
        n = len(self._shards)
        weight_map = {}
        for k, names in enumerate(self._shards):
            fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.rename(self.folder / f".shard{k:05d}", self.folder / fname)
            weight_map.update((name, fname) for name in names)
        index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        config = hf_config(self.shape, self._dtype)
        config.save_pretrained(str(self.folder))
        from transformers import GenerationConfig

        GenerationConfig.from_model_config(config).save_pretrained(str(self.folder))
        for src in tokenizer_files:
            shutil.copy2(src, self.folder / src.name)


def tokenizer_files_in(folder: Optional[Path]) -> list[Path]:
    """Tokenizer files of a saved tokenizer folder (``save_pretrained`` output), [] when there is none."""
    if folder is None or not Path(folder).is_dir():
        return []
    return [p for p in sorted(Path(folder).iterdir()) if p.is_file()]


def read_index_tensors(hf_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a Hugging Face folder in file order (for tests and comparisons; loads one at a time)."""
    from safetensors import safe_open

    index = Path(hf_dir) / INDEX_NAME
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [SINGLE_NAME]
    for fname in files:
        with safe_open(str(Path(hf_dir) / fname), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
