"""Metrics sinks: JSONL, TensorBoard, W&B, console, and the end-of-run plots (the statistics themselves are
computed by the stages and by `megatron_rlvr.eval.rollout_stats`).

Over-sharpening shows up as falling policy entropy and falling mode coverage (distinct correct answers per query,
the entropy over correct answers, PASS@k for k well above G) while AVG@G still rises; the plots written at the end
put those curves side by side, with both off-policy ratios of DLC.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from megatron_rlvr.errors import RunError


class PhaseTimer:
    """Wall-clock time per phase of a step (rollout, logprob recompute, policy update, ...).

    `sync` (e.g. `torch.cuda.synchronize`) runs at both ends of every phase, so queued GPU work is charged to the
    phase that queued it; the benchmarks pass it, the trainer does not (it would stall the pipeline)."""

    def __init__(self, sync: Optional[Callable[[], None]] = None) -> None:
        self.times: dict[str, float] = defaultdict(float)
        self.sync = sync

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.sync is not None:
            self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.times[name] += time.perf_counter() - t0

    def as_metrics(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.times.items()}
        out["time/step"] = sum(self.times.values())
        return out


def _scalar(v) -> Optional[float]:
    if isinstance(v, torch.Tensor):
        v = v.detach().float().mean().item()
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return float(v)
    return None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A torn last line (a crash or a full disk during its append) is dropped with a
    warning naming the file; a damaged line before the end is an error naming file and line."""
    lines = Path(path).read_bytes().split(b"\n")
    rows = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row")
        except ValueError:
            if all(not rest.strip() for rest in lines[i + 1:]):
                print(f"warning: {path} line {i + 1} is torn (an append that did not finish); dropped it, the "
                      "step is logged again when it reruns", file=sys.stderr, flush=True)
                break
            raise RunError(f"{path} line {i + 1} is not a metrics row ({raw[:60]!r}); fix: repair or delete that "
                           "line (or the file, to start its metrics over)") from None
        rows.append(row)
    return rows


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (tmp + fsync + rename): a crash leaves the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_line(path: Path, line: str) -> None:
    """Append one line with a single write to an O_APPEND file, then fsync; if the write fails or is short (full
    disk), the file is cut back to its old size, so it never ends in a torn line."""
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, before)
            raise RunError(f"appending to {path} failed ({err.strerror or err}); the disk may be full; fix: free "
                           "space and rerun the same command (it resumes from the last checkpoint)") from err
    finally:
        os.close(fd)


class MetricsLogger:
    """Writes one JSON line per step (and TensorBoard / W&B when enabled). Only rank 0 writes.

    On resume, lines of steps after the resumed checkpoint are dropped, so metrics.jsonl of a resumed run equals
    that of an uninterrupted one. Lines are appended whole (see `append_line`); a run that starts over (step 0)
    in a folder with metrics keeps the old file as metrics.jsonl.replaced-<time>.
    """

    def __init__(self, run_dir: Path, cfg, enabled: bool = True, resume_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tb = self.wandb = None
        self.history: list[dict] = []
        if not enabled:
            return
        if self.path.exists():
            rows = read_metrics(self.path)
            self.history = [r for r in rows if r["step"] < resume_step]
            text = "".join(json.dumps(r) + "\n" for r in self.history)
            if resume_step == 0 and rows:
                backup = self.path.with_name(f"metrics.jsonl.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(self.path, backup)
                print(f"metrics of the earlier run in this folder moved to {backup}", flush=True)
            if not self.path.exists() or text != self.path.read_text(errors="replace"):
                _replace_file(self.path, text)
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)
        if cfg.logging.wandb:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("logging.wandb=true needs `pip install wandb` (or set logging.wandb=false)") from err
            self.wandb = wandb.init(project=cfg.logging.wandb_project, config=cfg.to_dict(), dir=str(run_dir),
                                    resume="allow")

    def log(self, step: int, metrics: dict) -> dict:
        row = {"step": step}
        row.update({k: s for k, v in sorted(metrics.items()) if (s := _scalar(v)) is not None})
        if not self.enabled:
            return row
        append_line(self.path, json.dumps(row) + "\n")
        self.history.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=step)
        return row

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


PLOT_PANELS = (
    ("Reward and accuracy", ("reward/mean", "acc/avg_at_g", "acc/pass_at_g", "eval/avg_at_g", "eval/pass_at_g")),
    ("Policy entropy (rollout tokens; eval: policy alone)", ("policy/entropy", "eval/entropy")),
    ("Distinct correct answers per query", ("modes/distinct_correct_per_query", "eval/distinct_correct_per_query")),
    ("KL(pi_cal || pi_theta) and PPO KL", ("dlc/kl_cal_policy", "policy/ppo_kl")),
    ("Memory-model loss", ("memory/loss",)),
    ("IAC weight", ("iac/weight_mean", "iac/weight_max")),
    # eval/pass_at_<k> for every k the evaluation measured (filled in by write_plots), and the answer entropy
    ("PASS@k, policy alone (k up to eval.group_size)", ("eval/answer_entropy",)),
    ("Off-policy ratios: mismatch pi_old/pi_policy, shift pi_policy/pi_cal",
     ("offpolicy/mismatch/p05", "offpolicy/mismatch/p95", "offpolicy/shift/p05", "offpolicy/shift/p50",
      "offpolicy/shift/p95")),
)


def write_plots(history: list[dict], out_path: Path, title: str = "") -> Optional[Path]:
    """PNG of the over-sharpening curves (accuracy rising vs entropy and mode coverage falling)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(PLOT_PANELS)
    pass_keys = sorted({k for r in history for k in r if k.startswith("eval/pass_at_") and k[13:].isdigit()},
                       key=lambda k: int(k[13:]))
    panels = [(name, tuple(pass_keys) + keys) if name.startswith("PASS@k") else (name, keys) for name, keys in panels]
    fig, axes = plt.subplots(3, 3, figsize=(15, 11.5))
    steps = [r["step"] for r in history]
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for k in keys:
            # only the steps that logged k (evaluations run every eval.interval steps), joined by a line
            pts = [(st, r[k]) for st, r in zip(steps, history) if k in r and math.isfinite(r[k])]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, marker=".")
        ax.set_title(name)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
