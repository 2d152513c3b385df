"""Small language-model over-sharpening study with the real trainer (embedded CPU default).

GRPO, DAPO, IAC, DAPO + IAC and DAPO + IAC + DLC on the built-in multi-answer task, several seeds each, the same
budget; reports AVG@G, PASS@G, policy entropy and mode coverage (distinct correct answers per query) of the
policy ALONE (evaluation at lambda = 0), and checks the paper's qualitative claims against the numbers.

    python examples/lm_study/run.py --out runs/lm_study --seeds 0 1 2 --steps 40
    # -> runs/lm_study/<method>/seed<k>/metrics.jsonl, docs/RESULTS.md, docs/figures/lm_study_*.png

Runs are independent subprocesses of `megatron-rlvr train` (each a fresh process group); finished runs are
reused, so the command can be interrupted and rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DAPO = ["algorithm.dynamic_sampling=true", "algorithm.clip_eps_high=0.28", "algorithm.overlong_shaping=true",
        "algorithm.loss_agg=token-mean"]
METHODS: dict[str, list[str]] = {
    "GRPO": ["algorithm.iac_alpha=0", "dlc.enabled=false"],
    "DAPO": ["algorithm.iac_alpha=0", "dlc.enabled=false", *DAPO],
    "IAC": ["algorithm.iac_alpha=1", "dlc.enabled=false"],
    "DAPO+IAC": ["algorithm.iac_alpha=1", "dlc.enabled=false", *DAPO],
    "DAPO+IAC+DLC": ["algorithm.iac_alpha=1", "dlc.enabled=true", *DAPO],
}
REPORTED = (
    ("AVG@8", "eval/avg_at_g"), ("PASS@8", "eval/pass_at_g"), ("modes/query", "eval/distinct_correct_per_query"),
    ("policy entropy", "eval/entropy"),
)
ROOT = Path(__file__).resolve().parents[2]


def run_one(method: str, seed: int, out: Path, common: list[str]) -> Path:
    run_dir = out / method / f"seed{seed}"
    done = run_dir / "metrics.jsonl"
    if (run_dir / "DONE").is_file():
        return done
    # One warm-start cache per seed: every method of a seed starts from the same policy, and the methods of a
    # seed run one after another, so no two processes ever write the same cache.
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", f"seed={seed}",
           "checkpoint.load=none", f"warm_start.cache_dir={out / f'warm_start_seed{seed}'}", *common,
           *METHODS[method]]
    t0 = time.time()
    print(f"[{method} seed {seed}] {' '.join(cmd[3:])}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-3000:] + res.stderr[-3000:])
        raise SystemExit(f"run {method} seed {seed} failed (exit {res.returncode})")
    (run_dir / "DONE").write_text(f"{time.time() - t0:.1f} s\n")
    print(f"[{method} seed {seed}] done in {time.time() - t0:.0f} s", flush=True)
    return done


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_eval(rows: list[dict], key: str, last: int) -> float:
    vals = [r[key] for r in rows if key in r][-last:]
    return statistics.fmean(vals) if vals else float("nan")


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def plot(curves: dict, out_png: Path, key: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, runs in curves.items():
        series = [[(r["step"], r[key]) for r in rows if key in r] for rows in runs]
        series = [s for s in series if s]
        if not series:
            continue
        steps = [st for st, _ in series[0]]
        n = min(len(s) for s in series)
        mean = [statistics.fmean(s[i][1] for s in series) for i in range(n)]
        ax.plot(steps[:n], mean, marker=".", label=method)
        if len(series) > 1:
            sd = [statistics.stdev(s[i][1] for s in series) for i in range(n)]
            ax.fill_between(steps[:n], [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                            alpha=0.15)
    ax.set_title(title)
    ax.set_xlabel("RL step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def claims(table: dict) -> list[str]:
    """The paper's qualitative findings, each checked against this run's numbers. A difference smaller than the
    two methods' seed spreads combined is reported as within noise, never as agreement."""

    def verdict(better: str, worse: str, key: str) -> str:
        (mb, sb), (mw, sw) = table[better][key], table[worse][key]
        diff = mb - mw
        if abs(diff) <= sb + sw:
            return f"within noise ({diff:+.3f}, spreads {sb:.3f} + {sw:.3f})"
        return f"{'agrees' if diff > 0 else 'does NOT agree'} ({diff:+.3f})"

    checks = [
        ("IAC beats GRPO on AVG@8 (paper Table 1)", "IAC", "GRPO", "AVG@8"),
        ("IAC beats GRPO on PASS@8 (paper Table 1)", "IAC", "GRPO", "PASS@8"),
        ("DAPO + IAC beats DAPO on AVG@8 (paper Table 2)", "DAPO+IAC", "DAPO", "AVG@8"),
        ("adding DLC to DAPO + IAC raises AVG@8 (paper Table 2)", "DAPO+IAC+DLC", "DAPO+IAC", "AVG@8"),
        ("DLC keeps more correct modes per query than GRPO (the paper's premise)", "DAPO+IAC+DLC", "GRPO",
         "modes/query"),
        ("DLC keeps policy entropy above GRPO's", "DAPO+IAC+DLC", "GRPO", "policy entropy"),
    ]
    return [f"| {text} | {verdict(b, w, k)} |" for text, b, w, k in checks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/lm_study")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--last", type=int, default=2, help="average the final N evaluations")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    ap.add_argument("--jobs", type=int, default=1, help="seeds in parallel (one core each)")
    ap.add_argument("--runs-only", action="store_true", help="train the runs, write no report")
    args = ap.parse_args(argv)
    out = Path(args.out).absolute()
    common = [f"steps={args.steps}", "logging.progress=false", "logging.tensorboard=false", "logging.plots=false",
              "checkpoint.export_hf=false", "checkpoint.save_interval=0", "eval.interval=5", *args.extra]
    t0 = time.time()
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(m, s) for m in args.methods for s in args.seeds]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:  # seeds in parallel, methods in sequence
        per_seed = dict(zip(args.seeds, pool.map(
            lambda s: {m: run_one(m, s, out, common) for m in args.methods}, args.seeds)))
    paths = [per_seed[s][m] for m, s in jobs]
    wall = time.time() - t0
    env_file = out / "runs_env.json"
    if wall > 60 or not env_file.is_file():  # where and how long the runs themselves took
        env_file.write_text(json.dumps({"cores": os.cpu_count(), "wall_min": round(wall / 60, 1),
                                        "gpu_hidden": os.environ.get("CUDA_VISIBLE_DEVICES") == ""}))
    run_env = json.loads(env_file.read_text())
    if args.runs_only:
        return 0
    curves: dict[str, list] = {m: [] for m in args.methods}
    for (m, _), path in zip(jobs, paths):
        curves[m].append(load(path))
    table = {m: {label: mean_std([final_eval(rows, key, args.last) for rows in runs]) for label, key in REPORTED}
             for m, runs in curves.items()}
    doc = Path(args.doc)
    figs = doc.parent / "figures"
    panels = [("eval/avg_at_g", "AVG@8 (policy alone)"), ("eval/pass_at_g", "PASS@8 (policy alone)"),
              ("eval/distinct_correct_per_query", "distinct correct answers per query"),
              ("policy/entropy", "policy entropy on rollout tokens")]
    for key, title in panels:
        plot(curves, figs / f"lm_study_{key.split('/')[-1]}.png", key, title)
    cmd = f"python examples/lm_study/run.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps}"
    lines = [
        "# Small language-model study: over-sharpening with the real trainer",
        "",
        f"Generated by `{cmd}`; the runs used the CPU only ({run_env['cores']} cores, {run_env['wall_min']} min"
        f" wall with --jobs). Tiny Qwen3-shaped",
        "policy and memory models (presets `tiny`, `tiny-mem`) on the built-in multi-answer task after the cached",
        f"warm start, {args.steps} RL steps of 8 prompts x 8 responses each, every method with the same budget.",
        "Evaluation samples the policy alone (lambda = 0, 16 fixed prompts x 8 responses) every 5 steps; the table",
        f"averages the last {args.last} evaluations per run, then mean +- std over seeds {args.seeds}.",
        "",
        "| method | " + " | ".join(label for label, _ in REPORTED) + " |",
        "|---|" + "---|" * len(REPORTED),
    ]
    for m, row in table.items():
        lines.append(f"| {m} | " + " | ".join(f"{mu:.3f} +- {sd:.3f}" for mu, sd in row.values()) + " |")
    lines += ["", "## The paper's findings against these numbers", "", "| finding | here |", "|---|---|"]
    if all(k in table for k in METHODS):
        lines += claims(table)
    lines += ["", "## Curves (mean over seeds, band = one std)", ""]
    lines += [f"![{title}](figures/lm_study_{key.split('/')[-1]}.png)" for key, title in panels]
    doc.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(lines) + "\n"
    notes = doc.with_name("RESULTS-notes.md")
    if notes.is_file():  # hand-written reading of the numbers, kept across regenerations
        body += "\n" + notes.read_text()
    doc.write_text(body)
    (out / "summary.json").write_text(json.dumps({m: {k: list(v) for k, v in row.items()}
                                                  for m, row in table.items()}, indent=1))
    print("\n".join(lines[8 : 10 + len(table)]))
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
