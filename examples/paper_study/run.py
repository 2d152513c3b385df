"""The paper's comparison with the real trainer, as one command: GRPO over-sharpens on the coupled task, IAC and DLC
hold it off; every row of grid.py for several seeds, side by side on one machine, then docs/RESULTS.md.

    # on one GPU machine (16 cores, 1 H200), within one 9-minute call; repeat with the results folder to continue
    python -m examples.paper_study run --budget full --out $OUT --results examples/paper_study/results \
        --deadline-min 8.5
    # afterwards, anywhere (CPU, seconds): statistics, figures and docs/RESULTS.md from the collected JSONL
    python -m examples.paper_study report --results examples/paper_study/results --doc docs/RESULTS.md

Every run is a `megatron-rlvr train` subprocess (its own process group, one CPU thread) on the coupled shift-cipher
task (`task.name=synthetic_coupled`); the seeds' warm starts are trained once, first, in parallel, and shared by
all rows of a seed. A finished run appends one JSON line (its evaluations of the policy alone, periodic training
metrics, wall time, device) to `<out>/results_<tag>.jsonl`; runs already present in any `--results` file are
skipped, so the study can be spread over several calls (`--shard i/n`, or `--deadline-min`: no run is started
that would not finish in time, and runs still going at the deadline are stopped and left for the next call).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from examples.paper_study import grid

ROOT = Path(__file__).resolve().parents[2]


def run_key(row: str, seed: int, steps: int, extra: list[str], device: str) -> str:
    """Identity of a run: same row, seed, budget, extra overrides and device = same run (skipped when done)."""
    h = hashlib.sha256(json.dumps([row, grid.ROWS[row], seed, steps, sorted(extra), grid.COMMON, device]).encode())
    return h.hexdigest()[:12]


def done_keys(paths: list[Path]) -> set[str]:
    keys = set()
    for rec in iter_records(paths):
        if rec.get("type") == "run" and rec.get("rc") == 0:
            keys.add(rec["key"])
    return keys


def iter_records(paths: list[Path]):
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else ([p] if p.is_file() else [])
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def device_description(device: str) -> dict:
    info = {"host": socket.gethostname(), "cores": os.cpu_count(), "python": platform.python_version(),
            "device": device}
    if device == "cuda":
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
        except Exception as err:  # the report says what was used; a failed query must not stop the study
            info["gpu"] = f"unknown ({err})"
    return info


def train_cmd(run_dir: Path, seed: int, steps: int, overrides: list[str], work: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", f"seed={seed}",
            f"steps={steps}", f"warm_start.cache_dir={work / 'warm_start'}", *grid.COMMON, *overrides, *extra]


def child_env(device: str) -> dict:
    # the repo first, then whatever the caller had (the device puts the Megatron wheels in /tmp/site that way)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer picks CUDA whenever it sees a GPU
    return env


def extract(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(evaluations, periodic training rows) from a finished run's metrics.jsonl, compactly."""
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    evals = [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith(grid.EVAL_PREFIX)}}
             for r in rows if any(k.startswith(grid.EVAL_PREFIX) for k in r)]
    train = []
    for r in rows:
        if r["step"] % grid.TRAIN_EVERY == 0 or r["step"] == rows[-1]["step"]:
            keep = {k: v for k, v in r.items() if k in grid.TRAIN_KEYS or k.startswith(grid.TRAIN_PREFIXES)}
            train.append({"step": r["step"], **{k: round(v, 5) for k, v in keep.items()}})
    return evals, train


class Scheduler:
    """Up to `jobs` subprocesses at a time; never starts one that would run past the deadline."""

    def __init__(self, jobs: int, deadline: float | None, device: str):
        self.jobs, self.deadline, self.device = jobs, deadline, device
        self.running: list[tuple[subprocess.Popen, dict, float]] = []
        self.walls: dict[bool, list[float]] = {True: [], False: []}  # DLC runs take longer than the others

    def estimate(self, dlc: bool) -> float:
        seen = self.walls[dlc] or self.walls[not dlc]
        return statistics.median(seen) * (1.0 if self.walls[dlc] else 1.5) if seen else 0.0

    def fits(self, dlc: bool) -> bool:
        return self.deadline is None or time.time() + self.estimate(dlc) * 1.1 < self.deadline

    def start(self, cmd: list[str], job: dict, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = log.open("w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(self.device), stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        self.running.append((proc, job, time.time()))

    def wait_slot(self, on_done) -> None:
        while len(self.running) >= self.jobs:
            self.poll(on_done)
            time.sleep(0.5)

    def poll(self, on_done) -> None:
        still = []
        for proc, job, t0 in self.running:
            rc = proc.poll()
            if rc is None:
                if self.deadline is not None and time.time() > self.deadline:
                    proc.terminate()  # left for the next call; its partial run folder is redone from scratch
                    proc.wait(timeout=30)
                    print(f"[stopped at deadline] {job['label']}", flush=True)
                    continue
                still.append((proc, job, t0))
                continue
            wall = time.time() - t0
            if job.get("dlc") is not None and rc == 0:
                self.walls[job["dlc"]].append(wall)
            on_done(job, rc, wall)
        self.running = still

    def drain(self, on_done) -> None:
        while self.running:
            self.poll(on_done)
            time.sleep(0.5)


def cmd_run(args) -> int:
    budget = dict(grid.BUDGETS[args.budget])
    rows = args.rows or budget["rows"]
    seeds = args.seeds if args.seeds is not None else budget["seeds"]
    steps = args.steps or budget["steps"]
    unknown = [r for r in rows if r not in grid.ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; fix: choose from {list(grid.ROWS)}")
    t_start = time.time()
    deadline = t_start + args.deadline_min * 60 if args.deadline_min else None
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).absolute()
    device = args.device if args.device != "auto" else ("cuda" if _cuda() else "cpu")
    tag = args.tag or (f"shard{args.shard.replace('/', 'of')}" if args.shard else time.strftime("%Y%m%dT%H%M%S"))
    res_file = out / f"results_{tag}.jsonl"
    have = done_keys([*map(Path, args.results), out])
    jobs = [(r, s) for r in rows for s in seeds]
    if args.shard:
        i, n = (int(x) for x in args.shard.split("/"))
        jobs = jobs[i::n]
    todo = [(r, s) for r, s in jobs if run_key(r, s, steps, args.extra, device) not in have]
    print(f"paper study: {len(jobs)} runs in this selection, {len(jobs) - len(todo)} already done, {len(todo)} to "
          f"run ({steps} steps each, {args.jobs} at a time, device {device})", flush=True)
    info = device_description(device)
    sched = Scheduler(args.jobs, deadline, device)
    n_ok = [0]

    def write(rec: dict) -> None:
        with res_file.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_done(job: dict, rc: int, wall: float) -> None:
        if job["kind"] == "warm":
            if rc != 0:
                print((work / "logs" / f"warm_seed{job['seed']}.log").read_text()[-3000:], file=sys.stderr)
                raise SystemExit(f"warm start of seed {job['seed']} failed (exit {rc})")
            print(f"[warm start seed {job['seed']}] {wall:.0f} s", flush=True)
            return
        rec = {"type": "run", "key": job["key"], "row": job["row"], "seed": job["seed"], "steps": steps,
               "overrides": grid.ROWS[job["row"]], "common": grid.COMMON, "extra": args.extra, "device": device,
               "rc": rc,
               "wall_s": round(wall, 1)}
        if rc == 0:
            rec["evals"], rec["train"] = extract(job["run_dir"])
            n_ok[0] += 1
            final = rec["evals"][-1] if rec["evals"] else {}
            print(f"[{job['label']}] {wall:.0f} s  " + " ".join(
                f"{k[5:]} {final[k]:.3f}" for k in ("eval/avg_at_g", "eval/distinct_correct_per_query",
                                                    "eval/pass_at_64") if k in final), flush=True)
        else:
            rec["error"] = job["log"].read_text()[-2000:]
            print(f"[{job['label']}] FAILED (exit {rc}); log {job['log']}", flush=True)
        write(rec)

    # 1) one warm start per seed (the seeds' caches differ, so they never write the same folder), in parallel
    warm = not any(x in ("warm_start.enabled=false", "warm_start.steps=0") for x in args.extra)
    for s in sorted({s for _, s in todo}) if warm else []:
        log = work / "logs" / f"warm_seed{s}.log"
        sched.wait_slot(on_done)
        sched.start(train_cmd(work / "warm" / f"seed{s}", s, 0, grid.NO_DLC, work, args.extra),
                    {"kind": "warm", "seed": s, "label": f"warm start seed {s}"}, log)
    sched.drain(on_done)
    # 2) the RL runs, Table 3 rows first (grid order), every seed of a row together
    skipped = 0
    for r, s in todo:
        dlc = "dlc.enabled=true" in grid.ROWS[r]
        if not sched.fits(dlc):
            skipped += 1
            continue
        sched.wait_slot(on_done)
        if not sched.fits(dlc):
            skipped += 1
            continue
        key = run_key(r, s, steps, args.extra, device)
        run_dir = work / "runs" / key
        log = work / "logs" / f"{key}.log"
        sched.start(train_cmd(run_dir, s, steps, grid.ROWS[r], work, args.extra),
                    {"kind": "run", "row": r, "seed": s, "key": key, "run_dir": run_dir, "log": log, "dlc": dlc,
                     "label": f"{r} seed {s}"}, log)
    sched.drain(on_done)
    wall = time.time() - t_start
    write({"type": "call", "tag": tag, "wall_s": round(wall, 1), "runs_finished": n_ok[0],
           "runs_left": len(todo) - n_ok[0], "jobs": args.jobs, "budget": args.budget, "steps": steps,
           "command": " ".join(sys.argv), **info})
    print(f"paper study: {n_ok[0]} runs finished in {wall / 60:.1f} min, {len(todo) - n_ok[0]} left "
          f"({skipped} not started: deadline); results in {res_file}", flush=True)
    if args.doc:
        from examples.paper_study.report import write_report

        write_report([*map(Path, args.results), out], Path(args.doc))
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m examples.paper_study", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the grid's runs (skips those already in --results)")
    r.add_argument("--budget", choices=list(grid.BUDGETS), default="full",
                   help="rows x seeds x steps preset: full (17 rows x 5 seeds x 300 steps), table3, smoke")
    r.add_argument("--rows", nargs="+", help="only these rows of grid.ROWS (default: the budget's)")
    r.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the budget's)")
    r.add_argument("--steps", type=int, help="RL steps per run (default: the budget's)")
    r.add_argument("--out", required=True, help="folder for results_<tag>.jsonl (e.g. $OUT on the device)")
    r.add_argument("--results", nargs="*", default=[], help="earlier results (files or folders): runs there are skipped")
    r.add_argument("--work", default="/tmp/paper_study", help="run folders, logs and warm-start caches")
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs side by side (default: one per core)")
    r.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto = cuda when a GPU is visible; cpu hides it from the runs")
    r.add_argument("--deadline-min", type=float, default=None,
                   help="stop after this many minutes (runs that would not finish are left for the next call)")
    r.add_argument("--shard", default=None, help="i/n: only every n-th run starting at i")
    r.add_argument("--tag", default=None, help="name of this call's results file (default: shard or time)")
    r.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    r.add_argument("--doc", default=None, help="also write this RESULTS.md from all results afterwards")
    rep = sub.add_parser("report", help="statistics, figures and RESULTS.md from collected results")
    rep.add_argument("--results", nargs="+", required=True, help="results files or folders (*.jsonl)")
    rep.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args)
    from examples.paper_study.report import write_report

    write_report([Path(p) for p in args.results], Path(args.doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
