"""Guards of a run that lasts days: one process per run folder, a clean stop on preemption signals, and resumes
that stay exact (never past `steps`, never onto a config that changed what the checkpoint's trajectory depends on).

Used by `megatron_rlvr.run.runtime` (set-up, resume) and the loop in `megatron_rlvr.train` (stop requests).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import yaml

from megatron_rlvr.config import MOVED_KEYS
from megatron_rlvr.errors import PREEMPTED_EXIT_CODE, RunError

LOCK_NAME = ".lock"
CONFIG_CHANGES = "config_changes.jsonl"

# Fields that do not enter the trajectory of a run: changing them on resume keeps it exact.
SAFE_TO_CHANGE = ("run_dir", "steps", "checkpoint", "logging", "eval", "warm_start", "rollout.server_urls",
                  "policy.init_from", "memory.init_from")
# Fields the checkpoint's weights depend on: they can never change on resume.
NEVER_CHANGE = {
    "policy.preset": "the checkpoint holds weights of the old preset's shape",
    "memory.preset": "the checkpoint holds weights of the old preset's shape",
    "dlc.enabled": "the checkpoint holds the memory model (or not) as the run started",
}

_held_locks: list[int] = []  # file descriptors of held run-folder locks (released when the process ends)


# ----------------------------------------------------------------------------------------------- run-folder lock
def lock_run_dir(run_dir: Path) -> None:
    """Take an exclusive lock on `run_dir` for the life of this process, or fail at once naming the holder.

    flock is released by the kernel when the process dies, kill -9 included, so a stale lock never blocks a
    resume. File systems without flock (some NFS mounts) get a warning and no lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunError(f"run_dir {run_dir} is in use by another train process ({holder}, lock {path}); fix: wait "
                       "for it to finish or stop it, or pass another run_dir=") from None
    except OSError as err:
        print(f"warning: cannot lock {path} ({err.strerror}); nothing stops a second train process on this "
              "run_dir", flush=True)
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _held_locks.append(fd)


# ----------------------------------------------------------------------------------------------- stop signals
class StopSignals:
    """SIGTERM (Slurm preemption, time limit, `scancel`) and SIGUSR1 (`sbatch --signal`): the first one asks the
    loop to finish its step, write a checkpoint and exit with PREEMPTED_EXIT_CODE; a second one exits at once
    (the last complete checkpoint stays intact, the write of a checkpoint is atomic)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: Optional[int] = None

    def install(self) -> "StopSignals":
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            os.write(2, f"{name} again: stopping now (exit {PREEMPTED_EXIT_CODE}); resume starts from the last "
                        "checkpoint\n".encode())
            os._exit(PREEMPTED_EXIT_CODE)
        self.received = signum
        os.write(2, f"{name} received: finishing this step, then writing a checkpoint and exiting with "
                    f"{PREEMPTED_EXIT_CODE} (requeue resumes)\n".encode())

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a stop request"

    def requested(self) -> bool:
        """Whether any rank got a stop signal. Collective: every rank calls it at the same point of the loop."""
        flag = self.received is not None
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            t = torch.tensor([int(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self.received is None:
                self.received = signal.SIGTERM  # another rank's signal
        return flag


# ----------------------------------------------------------------------------------------------- resume checks
def check_resume_step(cfg, ckpt: Path, step: int) -> None:
    if step > cfg.steps:
        raise RunError(f"steps={cfg.steps}: checkpoint {ckpt} is already at step {step} and a run cannot go back; "
                       f"fix: pass steps>={step} to continue it, checkpoint.load=<an earlier iter folder> to redo "
                       "steps from there, or checkpoint.load=none / another run_dir to start over")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _covered(key: str, names) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def check_config_change(cfg, ckpt: Path, step: int, run_dir: Path) -> list[dict]:
    """Compare the config against the one the checkpoint was written with. Fields that change the trajectory must
    be named in checkpoint.allow_config_change (then each change is recorded in <run_dir>/config_changes.jsonl
    with its step); the presets and dlc.enabled can never change."""
    saved = ckpt / "config.yaml"
    if not saved.is_file():
        return []  # a models-only checkpoint (e.g. `convert from-hf`): no trajectory to keep
    try:
        old = _flatten(yaml.safe_load(saved.read_text()) or {})
    except yaml.YAMLError as err:
        raise RunError(f"{saved} is damaged ({err.__class__.__name__}); fix: resume from an earlier checkpoint") \
            from None
    old = {MOVED_KEYS.get(k, k): v for k, v in old.items()}  # written before a key moved: compare it where it is now
    new = _flatten(yaml.safe_load(cfg.to_yaml()))
    allowed = list(cfg.checkpoint.allow_config_change)
    changes, refused = [], []
    for key in sorted(set(old) & set(new)):  # fields added or removed by a code update are not comparable
        if old[key] == new[key] or _covered(key, SAFE_TO_CHANGE):
            continue
        if key in NEVER_CHANGE:
            raise RunError(f"{key}={new[key]!r}: checkpoint {ckpt} was written with {key}={old[key]!r}, and "
                           f"{NEVER_CHANGE[key]}; fix: keep {key}={old[key]!r} to resume, or start a new run "
                           "(another run_dir, or checkpoint.load=none)")
        (changes if _covered(key, allowed) else refused).append({"field": key, "checkpoint": old[key],
                                                                  "now": new[key]})
    if refused:
        desc = ", ".join(f"{c['field']} {c['checkpoint']!r} -> {c['now']!r}" for c in refused)
        names = ",".join(c["field"] for c in refused)
        raise RunError(f"resuming {ckpt} with a changed config ({desc}) would not continue the same run; fix: "
                       f"restore the old values, or accept the change with checkpoint.allow_config_change=[{names}] "
                       "(recorded in the run folder), or start a new run_dir")
    if changes and (not dist.is_initialized() or dist.get_rank() == 0):
        with open(run_dir / CONFIG_CHANGES, "a") as f:
            for c in changes:
                f.write(json.dumps({"step": step, **c, "checkpoint_dir": str(ckpt),
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, default=str) + "\n")
        print(f"config changed at step {step}: " + ", ".join(f"{c['field']} {c['checkpoint']!r} -> {c['now']!r}"
                                                             for c in changes)
              + f" (recorded in {run_dir / CONFIG_CHANGES})", flush=True)
    return changes
