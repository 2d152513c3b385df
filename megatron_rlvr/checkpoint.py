"""Checkpoint stage: atomic, resumable checkpoints of a whole run.

Layout of `<run_dir>/checkpoints/`:
    iter_0000010/
        policy/            Megatron dist-checkpoint {"model", "optimizer"} + model_info.json
        memory/            same, for the memory model (when DLC is on)
        trainer_state.pt   step, prompt-sampler position, RNG states, warm-start provenance
        config.yaml        the resolved run config
        tokenizer/         the task tokenizer (copied into Hugging Face exports)
    latest                 text file naming the newest complete iter dir

Atomicity: everything is written into `iter_XXXXXXX.tmp`, then renamed; `latest` is replaced with os.replace. A
crash at any point leaves the previous checkpoint and `latest` untouched; stale `.tmp` dirs are removed on the next
save. With several ranks, rank 0 owns the directory operations and all ranks write their dist-checkpoint shards.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"


def iter_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_checkpoint(root: Path, load: str) -> Optional[Path]:
    """Resolve `checkpoint.load`: auto -> newest complete checkpoint under root (or None); none -> None; a path ->
    that iter dir, or the newest inside a checkpoints folder."""
    if load == "none":
        return None
    base = root if load == "auto" else Path(load).expanduser()
    if (base / "trainer_state.pt").is_file() or (base / "policy").is_dir() or (base / "model_info.json").is_file():
        return base  # a trainer checkpoint, or models only (a `convert from-hf` folder holds model_info.json)
    latest = base / LATEST
    if latest.is_file():
        target = base / latest.read_text().strip()
        if not (target / "trainer_state.pt").is_file():
            raise FileNotFoundError(
                f"checkpoint {target} named by {latest} is missing trainer_state.pt; the checkpoint is incomplete: "
                f"point checkpoint.load at an earlier iter dir, or delete {latest} to start fresh")
        return target
    if load != "auto":
        raise FileNotFoundError(
            f"checkpoint.load={load}: no checkpoint there (expected trainer_state.pt or a '{LATEST}' file); "
            "pass an iter_XXXXXXX folder or a run's checkpoints folder")
    return None


def save_checkpoint(root: Path, step: int, models: dict, trainer_state: dict, config_yaml: str,
                    tokenizer=None, keep_last: int = 0) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it. `models` maps name -> TrainableModel."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / iter_dir_name(step)
    tmp = root / (iter_dir_name(step) + ".tmp")
    if _is_rank0():
        for stale in root.glob("iter_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    for name, model in models.items():
        model.save_checkpoint(tmp / name)
    if _is_rank0():
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")  # copied into Hugging Face exports
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _write_latest(root, final.name)
        _prune(root, keep_last)
    _barrier()
    return final


def load_trainer_state(ckpt: Path) -> dict:
    path = ckpt / "trainer_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {ckpt} is not a complete trainer checkpoint")
    return torch.load(path, weights_only=False)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(name + "\n")
    with open(tmp) as f:
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    done = sorted(p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
