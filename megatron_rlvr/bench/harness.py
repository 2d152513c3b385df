"""The one benchmark harness: timing, the provenance every result row carries, the CSV and the final JSON line.

Every benchmark of `megatron-rlvr bench` follows the same protocol (docs/ARCHITECTURE.md, "Benchmarks"):

- warm-up runs first (allocator, autotuning, graph capture, first touch), then the **median** of timed runs;
- a GPU time is measured with CUDA events around the work (`time_cuda`), or by replaying a captured CUDA graph
  (`time_graph`), never with a host clock alone; host-side phases (a whole RL step) use `time_host`, which
  synchronises the device at both ends so queued GPU work counts where it was queued;
- every result row starts with `device`, `date`, `commit` (`provenance`);
- rows are appended to a CSV (`append_csv`, the header written once) and the run's last stdout line is one JSON
  object (`emit`), so a script can read the result without parsing tables.

Baselines and ours run in the same process and are printed side by side with their ratio; the harness keeps no
numbers of its own.
"""

from __future__ import annotations

import csv
import datetime
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch


def git_commit() -> str:
    """The short commit of the source tree being benchmarked ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def provenance() -> dict[str, str]:
    """The first fields of every result row: what ran it, when, and which commit."""
    return {"device": device_name(), "date": datetime.date.today().isoformat(), "commit": git_commit()}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_host(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of one call, the device synchronised before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def time_cuda(fn: Callable[[], Any], warmup: int = 3, repeats: int = 20) -> float:
    """Median seconds of `fn` on the current CUDA stream, by CUDA events, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_graph(fn: Callable[[], Any], warmup: int = 3, repeats: int = 20) -> float:
    """Median seconds of one replay of `fn` captured as a CUDA graph (launch overhead excluded): the work's own
    GPU time. `fn` must be capturable (static shapes, no host synchronisation)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_cuda(graph.replay, warmup=1, repeats=repeats)


def median_of(fn: Callable[[], float], warmup: int = 1, repeats: int = 3) -> float:
    """Median of `repeats` values of `fn()` (each one a measurement, e.g. seconds) after `warmup` discarded ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(fn() for _ in range(repeats))


def append_csv(path: Path, record: dict[str, Any]) -> Path:
    """Append `record` as one CSV row to `path` (created with its header when new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(record))
        if f.tell() == 0:
            w.writeheader()
        w.writerow(record)
    return path


def emit(record: dict[str, Any], csv_path: Optional[Path] = None) -> None:
    """Write `record` to `csv_path` (when given) and print it as the run's last stdout line, one JSON object."""
    if csv_path is not None:
        append_csv(csv_path, record)
    print(json.dumps(record), flush=True)
