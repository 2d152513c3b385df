"""Checkpoint stage: atomic, verified, resumable checkpoints of a whole run.

Layout of `<run_dir>/checkpoints/`:
    iter_0000010/
        policy/            Megatron dist-checkpoint {"model", "optimizer"} + model_info.json
        memory/            same, for the memory model (when DLC is on)
        trainer_state.pt   step, prompt-sampler position, RNG states, warm-start provenance
        config.yaml        the resolved run config
        tokenizer/         the task tokenizer (copied into Hugging Face exports)
        integrity.json     size and SHA-256 of every file above; written last
    latest                 text file naming the newest complete iter dir

Atomicity: everything is written into `iter_XXXXXXX.tmp`, then renamed; `latest` is replaced with os.replace. A
crash at any point leaves the previous checkpoint and `latest` untouched; stale `.tmp` dirs are removed at the next
start (the run folder is locked, so no other process can be writing them). With several ranks, rank 0 owns the
directory operations and all ranks write their dist-checkpoint shards.

Integrity: `integrity.json` is written after every other file, so a checkpoint without it was never finished. On
resume the files are checked against it (sizes always, SHA-256 unless checkpoint.verify=size); a damaged
checkpoint is named with its damaged files and the newest intact earlier one is used instead, with a warning.

Retention (`keep_last`) only ever deletes checkpoints older than the one just written: never that one, never the
one `latest` names, and never the higher-numbered checkpoints of an earlier history in the same folder (a run
restarted with checkpoint.load=none).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_rlvr.errors import RunError
from megatron_rlvr.qwen3.model_info import MODEL_INFO

LATEST = "latest"
INTEGRITY = "integrity.json"
_ITER_RE = re.compile(r"^iter_(\d{7})$")
_HASH_CHUNK = 8 << 20


def iter_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def step_of(path: Path | str) -> Optional[int]:
    """The step of an `iter_XXXXXXX` folder name, None for anything else (tmp folders, stray files)."""
    m = _ITER_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _warn(msg: str) -> None:
    if _is_rank0():
        print(f"warning: {msg}", file=sys.stderr, flush=True)


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


# ----------------------------------------------------------------------------------------------- integrity
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != INTEGRITY)


def write_integrity(folder: Path, verify: str = "sha256") -> None:
    """Record size (and SHA-256) of every file of `folder` in integrity.json, fsynced; call it last."""
    files = {}
    for p in _files(folder):
        entry = {"size": p.stat().st_size}
        if verify == "sha256":
            entry["sha256"] = _sha256(p)
        files[p.relative_to(folder).as_posix()] = entry
    tmp = folder / (INTEGRITY + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"version": 1, "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / INTEGRITY)


def verify_checkpoint(folder: Path, only: Optional[str] = None) -> list[str]:
    """Problems of `folder` against its integrity.json (empty list: intact). Files under `only/` when given.

    A trainer checkpoint without integrity.json was never finished (or predates the record: then it is accepted
    when its trainer_state.pt exists, as before)."""
    record = folder / INTEGRITY
    if not record.is_file():
        if (folder / "trainer_state.pt").is_file():
            return []
        return [f"{record} is missing (the checkpoint was never finished)"]
    try:
        files = json.loads(record.read_bytes().decode())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{record} is unreadable ({type(err).__name__})"]
    problems = []
    for rel, want in files.items():
        if only is not None and not rel.startswith(only.rstrip("/") + "/"):
            continue
        p = folder / rel
        if not p.is_file():
            problems.append(f"{p} is missing")
        elif p.stat().st_size != want.get("size"):
            problems.append(f"{p} has {p.stat().st_size} bytes, {want.get('size')} were written")
        elif "sha256" in want and _sha256(p) != want["sha256"]:
            problems.append(f"{p} does not match its SHA-256 (the bytes changed after writing)")
    return problems


# ----------------------------------------------------------------------------------------------- finding
def read_latest(root: Path, warn: Callable[[str], None] = _warn) -> Optional[str]:
    """The iter folder name in `root/latest`, or None (with a warning) when the file is missing or garbage."""
    path = root / LATEST
    if not path.is_file():
        return None
    text = path.read_bytes()[:256].decode("utf-8", errors="replace").strip()
    if not _ITER_RE.match(text):
        warn(f"{path} is damaged (it should name an iter_XXXXXXX folder, it holds {text[:40]!r}); "
             "looking for the newest intact checkpoint instead")
        return None
    return text


def _candidates(root: Path) -> list[Path]:
    """iter folders of `root`, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of, reverse=True)


def _intact(folder: Path) -> list[str]:
    if not (folder / "trainer_state.pt").is_file() and not (folder / INTEGRITY).is_file():
        return [f"{folder / 'trainer_state.pt'} is missing (the checkpoint is incomplete)"]
    return verify_checkpoint(folder)


def _resolve(root: Path, load: str, warn: Callable[[str], None], verify: bool) -> Optional[Path]:
    if load == "none":
        return None
    base = root if load == "auto" else Path(load).expanduser()
    if (base / "trainer_state.pt").is_file() or (base / "policy").is_dir() or (base / MODEL_INFO).is_file() \
            or (base / INTEGRITY).is_file():
        # one given checkpoint folder (or a models-only one: `convert from-hf` writes model_info.json)
        problems = verify_checkpoint(base) if verify and (base / INTEGRITY).is_file() else []
        if problems:
            older = next((c for c in _candidates(base.parent) if (step_of(c) or 0) < (step_of(base) or 0)
                          and not _intact(c)), None)
            raise RunError(f"checkpoint {base} is damaged: {'; '.join(problems[:3])}; fix: "
                           + (f"resume from the previous intact one with checkpoint.load={older}" if older else
                              "restore it from a copy, or start over with checkpoint.load=none"))
        return base
    named = read_latest(base, warn)
    cands = _candidates(base)
    if named is None and not cands:
        if load != "auto":
            raise RunError(f"checkpoint.load={load}: no checkpoint there (expected trainer_state.pt or a "
                           f"'{LATEST}' file); fix: pass an iter_XXXXXXX folder or a run's checkpoints folder")
        return None
    if not (base / LATEST).is_file():
        warn(f"{base / LATEST} is missing but {base} holds checkpoints; resuming from the newest intact one")
    limit = step_of(named) if named is not None else None
    if named is not None and not (base / named).is_dir():
        warn(f"{base / LATEST} names {named}, which does not exist; looking for the newest intact checkpoint")
    damaged: list[str] = []
    for cand in cands:
        if limit is not None and step_of(cand) > limit:
            continue  # newer than `latest`: a checkpoint of an earlier history, or never made latest
        problems = _intact(cand) if verify else ([] if (cand / "trainer_state.pt").is_file() else ["incomplete"])
        if not problems:
            if damaged:
                warn(f"checkpoint {damaged[0]}; resuming from the newest intact checkpoint {cand} instead")
            return cand
        damaged.append(f"{cand} is damaged: {'; '.join(problems[:3])}")
    raise RunError(f"no intact checkpoint in {base}: {damaged[0] if damaged else 'none found'}; fix: restore the "
                   "checkpoints from a copy, or start over with checkpoint.load=none (or another run_dir)")


def find_checkpoint(root: Path, load: str, warn: Callable[[str], None] = _warn, verify: bool = True
                    ) -> Optional[Path]:
    """Resolve `checkpoint.load`: auto -> the checkpoint `latest` names under root, or (when it is damaged,
    missing or garbage) the newest intact earlier one, or None; none -> None; a path -> that iter dir (verified),
    or the newest intact one inside a checkpoints folder. Rank 0 decides (it reads the files), all ranks agree."""
    result: list = [None, None]
    if _is_rank0():
        try:
            found = _resolve(Path(root), load, warn, verify)
            result = [None if found is None else str(found), None]
        except RunError as err:
            result = [None, str(err)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(result, src=0)
    if result[1] is not None:
        raise RunError(result[1])
    return None if result[0] is None else Path(result[0])


# ----------------------------------------------------------------------------------------------- saving
def clean_stale_tmp(root: Path) -> list[Path]:
    """Remove unfinished `iter_*.tmp*` folders (call only while holding the run-folder lock)."""
    removed = []
    if root.is_dir():
        for stale in root.glob("iter_*.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _disk_full(err: BaseException, free_bytes: int) -> bool:
    """Whether a failed checkpoint write ran out of space. Megatron wraps the writer's error in a
    CheckpointException (per-rank `failures`), and torch's zip writer reports ENOSPC only as
    "[enforce fail at inline_container.cc] ... unexpected pos", so the free space decides those."""
    pending, texts = [err], []
    while pending:
        e = pending.pop()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        texts.append(str(e))
        pending += [c for c in (e.__cause__, e.__context__) if c is not None]
        for failure in getattr(e, "failures", {}).values():  # rank -> (exception, traceback) in torch
            pending += [f for f in (failure if isinstance(failure, tuple) else (failure,))
                        if isinstance(f, BaseException)]
    text = " ".join(texts)
    if "No space left" in text or "Disk quota exceeded" in text:
        return True
    return free_bytes < 64 * 2**20 and ("inline_container" in text or "Worker failure" in text)


def save_checkpoint(root: Path, step: int, models: dict, trainer_state: dict, config_yaml: str,
                    tokenizer=None, keep_last: int = 0, verify: str = "sha256") -> Path:
    """Write checkpoint `step` atomically, record its integrity, point `latest` at it, apply `keep_last`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / iter_dir_name(step)
    tmp = root / (iter_dir_name(step) + ".tmp")
    if _is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    try:
        for name, model in models.items():
            model.save_checkpoint(tmp / name)
        if _is_rank0():
            torch.save(trainer_state, tmp / "trainer_state.pt")
            (tmp / "config.yaml").write_text(config_yaml)
            if tokenizer is not None:
                tokenizer.save(tmp / "tokenizer")  # copied into Hugging Face exports
            _fsync_dir(tmp)
    except BaseException as err:  # torch's CheckpointException derives from BaseException
        free = shutil.disk_usage(root).free
        if _is_rank0():
            shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(err, free):
            raise RunError(f"writing checkpoint {final} failed: the disk holding {root} is full "
                           f"({free / 2**20:.0f} MiB free); the previous checkpoint is intact; fix: free space there "
                           "(or lower checkpoint.keep_last, or move run_dir) and rerun the same command to resume"
                           ) from err
        raise
    _barrier()
    if _is_rank0():
        write_integrity(tmp, verify)  # last: its presence means every file above is complete
        if final.exists():  # re-saving the same step (e.g. after a fallback): swap, then drop the old one
            old = root / (final.name + ".tmp-old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _write_latest(root, final.name)
        _prune(root, keep_last, final)
    _barrier()
    return final


def load_trainer_state(ckpt: Path) -> dict:
    path = ckpt / "trainer_state.pt"
    if not path.is_file():
        raise RunError(f"{path} is missing: {ckpt} is not a complete trainer checkpoint; fix: point "
                       "checkpoint.load at an earlier iter folder")
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:
        raise RunError(f"{path} is damaged ({type(err).__name__}: {str(err)[:120]}); fix: point checkpoint.load at "
                       "an earlier iter folder, or start over with checkpoint.load=none") from err


def _write_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _prune(root: Path, keep_last: int, just_written: Path) -> None:
    """Delete checkpoints older than the newest `keep_last` at or below the one just written. Never the one just
    written or the one `latest` names; never higher-numbered ones (an earlier history in this folder)."""
    if keep_last <= 0:
        return
    top = step_of(just_written)
    mine = [p for p in _candidates(root) if step_of(p) <= top]  # newest first
    protect = {just_written.name, read_latest(root, lambda _m: None)}
    for old in mine[keep_last:]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
