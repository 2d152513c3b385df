"""Warm start + first RL step over initialisation seeds: does every seed converge, and does RL then see reward?

    python tools/seed_sweep.py --seeds 0-7 --jobs 2 --out /tmp/sweep [train overrides ...]

Runs `megatron-rlvr train steps=1` once per seed (policy.init_seed = memory.init_seed = seed, a private warm-start
cache, the quality gate off so a stuck seed is measured instead of stopped) and prints, per seed, each model's
held-out warm-start loss, whether it is within the gate's bound, the step-0 rollout reward and the step-0
trainer/engine log-prob gap; the last line is one JSON object. Extra arguments are train overrides (e.g.
policy.dtype=float32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSS_LINE = re.compile(r"warm start: held-out loss policy ([0-9.]+), memory ([0-9.]+)")


def _seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def run_seed(seed: int, out: Path, overrides: list[str]) -> dict:
    run_dir = out / f"seed{seed}"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", "steps=1",
           f"warm_start.cache_dir={out / 'cache'}", f"policy.init_seed={seed}", f"memory.init_seed={seed}",
           "warm_start.gate=false", "checkpoint.load=none", "checkpoint.export_hf=false", "logging.plots=false",
           "logging.progress=false", "logging.tensorboard=false", "eval.interval=0", *overrides]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row = {"seed": seed, "rc": res.returncode, "wall_s": round(time.time() - t0, 1)}
    m = LOSS_LINE.search(res.stdout)
    if m:
        row.update(policy_loss=float(m.group(1)), memory_loss=float(m.group(2)))
    metrics = run_dir / "metrics.jsonl"
    if res.returncode == 0 and metrics.is_file():
        first = json.loads(metrics.read_text().splitlines()[0])
        row.update(reward=first["reward/mean"], logprob_gap=first["rollout/logprob_abs_diff"])
    else:
        row["error"] = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-7")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bound", type=float, default=0.6, help="the gate's bound the table compares against")
    args, overrides = p.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda s: run_seed(s, args.out, overrides), _seeds(args.seeds)))
    device = "cpu"
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 (the table still prints)
        pass
    print(f"device: {device}; date: {datetime.date.today()}; overrides: {' '.join(overrides) or '(defaults)'}")
    print("| seed | policy held-out loss | memory held-out loss | within bound | step-0 reward | step-0 log-prob gap |")
    print("|---:|---:|---:|:---:|---:|---:|")
    for r in rows:
        ok = r.get("policy_loss", 9) <= args.bound and r.get("memory_loss", 9) <= args.bound
        print(f"| {r['seed']} | {r.get('policy_loss', 'n/a')} | {r.get('memory_loss', 'n/a')} | {'yes' if ok else 'NO'}"
              f" | {r.get('reward', 'n/a')} | {r.get('logprob_gap', 'n/a')} |")
    losses = [r["policy_loss"] for r in rows if "policy_loss" in r]
    summary = {"device": device, "overrides": overrides, "rows": rows,
               "policy_loss_min": min(losses, default=None), "policy_loss_max": max(losses, default=None),
               "all_within_bound": all(r.get("policy_loss", 9) <= args.bound and r.get("memory_loss", 9) <= args.bound
                                       for r in rows)}
    print(json.dumps(summary))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
