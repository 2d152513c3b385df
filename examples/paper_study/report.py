"""docs/RESULTS.md and its figures from the study's collected results (JSONL written by `run`); CPU, seconds.

Per run, a metric's final value is the mean of its last two evaluations of the policy alone (lambda = 0, 32 fixed
prompts x 64 samples); rows are summarised by mean +- std over seeds, and every claim is a paired comparison over
seeds (stats.py) whose 95% interval decides the verdict.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from examples.paper_study import grid
from examples.paper_study.run import iter_records
from examples.paper_study.stats import compare, mean_sd, verdict

METRICS = (
    ("AVG@64", "eval/avg_at_g"), ("PASS@8", "eval/pass_at_8"), ("PASS@16", "eval/pass_at_16"),
    ("PASS@64", "eval/pass_at_64"), ("modes/query", "eval/distinct_correct_per_query"),
    ("answer entropy", "eval/answer_entropy"), ("token entropy", "eval/entropy"),
)
KEY = dict(METRICS)
LAST = 2  # evaluations averaged into a run's final value

# (claim, row a, row b or None = a's first evaluation, metric label, a - b expected positive?)
CLAIMS = (
    ("GRPO over-sharpens: distinct correct modes per query fall over training", "GRPO", None, "modes/query", False),
    ("GRPO over-sharpens: PASS@64 falls over training", "GRPO", None, "PASS@64", False),
    ("... while GRPO's AVG@64 rises", "GRPO", None, "AVG@64", True),
    ("IAC beats GRPO on AVG@64 (paper Tables 1, 3)", "IAC", "GRPO", "AVG@64", True),
    ("IAC beats GRPO on PASS@64 (paper Tables 1, 3)", "IAC", "GRPO", "PASS@64", True),
    ("IAC keeps more correct modes than GRPO (the paper's mechanism)", "IAC", "GRPO", "modes/query", True),
    ("IAC beats DAPO on AVG@64 (paper Table 3)", "IAC", "DAPO", "AVG@64", True),
    ("DAPO + IAC beats DAPO on AVG@64 (paper Table 3)", "DAPO+IAC", "DAPO", "AVG@64", True),
    ("DAPO + IAC beats DAPO on PASS@64 (paper Table 3)", "DAPO+IAC", "DAPO", "PASS@64", True),
    ("adding DLC to DAPO + IAC raises AVG@64 (paper Table 3)", "DAPO+IAC+DLC", "DAPO+IAC", "AVG@64", True),
    ("adding DLC to DAPO + IAC raises PASS@64 (paper Table 3)", "DAPO+IAC+DLC", "DAPO+IAC", "PASS@64", True),
    ("DAPO + IAC + DLC keeps more correct modes than GRPO", "DAPO+IAC+DLC", "GRPO", "modes/query", True),
    ("DAPO + IAC + DLC keeps more correct modes than DAPO + IAC", "DAPO+IAC+DLC", "DAPO+IAC", "modes/query", True),
    ("IAC alpha 1 beats alpha 0.5 on AVG@64 (paper Table 5: gains up to alpha 1)", "IAC", "IAC a=0.5", "AVG@64",
     True),
    ("IAC alpha 1 beats alpha 2 on AVG@64 (paper Table 5: mild degradation beyond)", "IAC", "IAC a=2", "AVG@64",
     True),
)


def load(paths: list[Path]) -> tuple[dict[str, dict[int, dict]], list[dict]]:
    runs: dict[str, dict[int, dict]] = {}
    calls = []
    for rec in iter_records(paths):
        if rec.get("type") == "call":
            calls.append(rec)
        elif rec.get("type") == "run" and rec.get("rc") == 0 and rec.get("evals"):
            runs.setdefault(rec["row"], {})[rec["seed"]] = rec  # a rerun of the same run replaces the older line
    return runs, calls


def final(rec: dict, key: str) -> float:
    vals = [e[key] for e in rec["evals"] if key in e][-LAST:]
    return statistics.fmean(vals) if vals else float("nan")


def first(rec: dict, key: str) -> float:
    vals = [e[key] for e in rec["evals"] if key in e]
    return vals[0] if vals else float("nan")


def per_seed(runs: dict, row: str, label: str, at=final) -> dict[int, float]:
    return {s: at(rec, KEY[label]) for s, rec in runs.get(row, {}).items() if not math.isnan(at(rec, KEY[label]))}


def fmt(m: float, sd: float) -> str:
    return "n/a" if math.isnan(m) else f"{m:.3f} +- {sd:.3f}"


def group_table(runs: dict, members: list[tuple[str, str]]) -> list[str]:
    lines = ["| row | seeds | " + " | ".join(l for l, _ in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for label, row in members:
        recs = runs.get(row, {})
        cells = [fmt(*mean_sd([final(r, k) for r in recs.values()])) for _, k in METRICS]
        lines.append(f"| {label} | {len(recs)} | " + " | ".join(cells) + " |")
    return lines


def claim_lines(runs: dict) -> list[str]:
    out = ["| claim | a - b: mean [95% interval], test | verdict |", "|---|---|---|"]
    for text, a, b, label, positive in CLAIMS:
        va = per_seed(runs, a, label)
        vb = per_seed(runs, a, label, at=first) if b is None else per_seed(runs, b, label)
        v = verdict(compare(va, vb), positive)
        head, _, rest = v.partition(" (")
        what = f"{a} final - first eval" if b is None else f"{a} - {b}"
        out.append(f"| {text} | {what}: {rest.rstrip(')') or 'n/a'} | {head} |")
    return out


def correction_lines(runs: dict) -> list[str]:
    members = grid.GROUPS["DLC off-policy corrections (DAPO + IAC + DLC, lambda 0.3)"]
    base = members[0][1]
    out = ["| correction | AVG@64 vs none | PASS@64 vs none | modes/query vs none |", "|---|---|---|---|"]
    for label, row in members[1:]:
        cells = [verdict(compare(per_seed(runs, row, m), per_seed(runs, base, m))) for m in
                 ("AVG@64", "PASS@64", "modes/query")]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def curves(runs: dict, row: str, key: str, source: str = "evals") -> tuple[list[int], list[float], list[float]]:
    series = [[(e["step"], e[key]) for e in rec[source] if key in e] for rec in runs.get(row, {}).values()]
    series = [s for s in series if s]
    if not series:
        return [], [], []
    n = min(len(s) for s in series)
    steps = [st + 1 for st, _ in series[0][:n]]
    mean = [statistics.fmean(s[i][1] for s in series) for i in range(n)]
    sd = [statistics.stdev(s[i][1] for s in series) if len(series) > 1 else 0.0 for i in range(n)]
    return steps, mean, sd


def figures(runs: dict, figdir: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    made = []
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, label in zip(axes.flat, ("AVG@64", "PASS@64", "modes/query", "answer entropy")):
        for _, row in grid.GROUPS["Table 3 (paper): methods"]:
            st, m, sd = curves(runs, row, KEY[label])
            if st:
                ax.plot(st, m, marker=".", label=row)
                ax.fill_between(st, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.15)
        ax.set_title(f"{label} (policy alone)")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / "paper_study_table3.png", dpi=110)
    plt.close(fig)
    made.append(("Table 3 rows over training (mean over seeds, band = one std)", "paper_study_table3.png"))

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for col, (gname, xlabel) in enumerate((("Table 5 (paper): IAC alpha sweep (GRPO + IAC)", "alpha"),
                                           ("DLC lambda sweep (DAPO + IAC + DLC)", "lambda"))):
        members = grid.GROUPS[gname]
        xs = [float(lab.split()[1]) for lab, _ in members]
        for r, label in enumerate(("AVG@64", "modes/query")):
            ms = [mean_sd([final(rec, KEY[label]) for rec in runs.get(row, {}).values()]) for _, row in members]
            ax = axes[r][col]
            ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=4)
            ax.set_xlabel(xlabel)
            ax.set_title(f"{label} at the end ({gname.split(':')[0] if ':' in gname else gname})", fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figdir / "paper_study_sweeps.png", dpi=110)
    plt.close(fig)
    made.append(("alpha and lambda sweeps: final value, mean +- std over seeds", "paper_study_sweeps.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("shift", "mismatch")):
        for q in ("p05", "p50", "p95"):
            st, m, _ = curves(runs, "DAPO+IAC+DLC", f"offpolicy/{kind}/{q}", source="train")
            if st:
                ax.plot(st, m, label=q)
        ax.set_title(f"{kind} ratio per token, DAPO+IAC+DLC (no correction)")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / "paper_study_offpolicy.png", dpi=110)
    plt.close(fig)
    made.append(("both off-policy ratios over training (quantiles, mean over seeds)", "paper_study_offpolicy.png"))
    return made


def _setting(recs: list[dict], key: str) -> str:
    """The value of override `key` the runs used (grid.COMMON, then --extra), e.g. eval.group_size."""
    vals = set()
    for r in recs:
        found = "default"
        for item in [*r.get("common", grid.COMMON), *r.get("extra", [])]:
            if item.startswith(key + "="):
                found = item.split("=", 1)[1]
        vals.add(found)
    return "/".join(sorted(vals))


def header(runs: dict, calls: list[dict], paths: list[Path]) -> list[str]:
    recs = [r for per in runs.values() for r in per.values()]
    steps = sorted({r["steps"] for r in recs})
    devices = sorted({r["device"] for r in recs})
    gpus = sorted({c.get("gpu", "") for c in calls if c.get("gpu")})
    hosts = sorted({f"{c.get('cores')} cores" for c in calls})
    wall = sum(c["wall_s"] for c in calls) / 60
    run_wall = statistics.fmean(r["wall_s"] for r in recs) if recs else float("nan")
    return [
        "# Over-sharpening with the real trainer: GRPO, DAPO, IAC, DLC on the coupled task",
        "",
        f"Generated by `python -m examples.paper_study report --results {' '.join(_rel(p) for p in paths)}` from the "
        f"results of `python -m examples.paper_study run` ({len(calls)} call(s), {wall:.1f} min wall in all; "
        f"device of the runs: {', '.join(devices) or 'none'}"
        + (f", GPU {', '.join(gpus)}" if gpus else "") + f"; host {', '.join(hosts) or 'unknown'}; "
        f"{run_wall:.0f} s per run on average, many runs side by side).",
        "",
        f"Setting: tiny Qwen3-shaped policy and memory models (presets `tiny`, `tiny-mem`) on `task.name="
        f"synthetic_coupled` (64 queries, 4 correct shifts each out of 7, family habits and exception queries; "
        f"`megatron_rlvr/tasks/synthetic.py`), after a per-seed warm start shared by all rows of a seed; "
        f"{'/'.join(map(str, steps))} RL steps of 8 prompts x G = 8 responses, every row with the same budget; "
        f"{len({s for per in runs.values() for s in per})} seeds. Evaluation samples the policy alone (lambda = 0) "
        f"every {_setting(recs, 'eval.interval')} steps, {_setting(recs, 'eval.num_prompts')} fixed prompts x "
        f"{_setting(recs, 'eval.group_size')} samples (first evaluation after that many steps): AVG@64 is the mean "
        "accuracy, PASS@k the unbiased estimate for k = 8, 16, 64 (k well above G), modes/query the distinct correct answers among the 64 samples, answer "
        "entropy the entropy (nats) over a query's correct answers, token entropy that of the sampled tokens. A "
        f"run's value is the mean of its last {LAST} evaluations; tables give mean +- std over seeds; claims are "
        "paired by seed: mean difference, 95% Student-t interval, exact sign-flip test (with 5 seeds its p cannot "
        "go below 0.0625, so the interval decides).",
        "",
    ]


def _rel(p: Path) -> str:
    try:
        return str(Path(p).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def write_report(paths: list[Path], doc: Path) -> Path:
    runs, calls = load(paths)
    if not runs:
        raise SystemExit(f"no finished runs in {[str(p) for p in paths]}; fix: run `python -m examples.paper_study "
                         "run` first and pass its results files or folder")
    lines = header(runs, calls, paths)
    lines += ["## The paper's claims against these numbers", ""] + claim_lines(runs) + [""]
    for gname, members in grid.GROUPS.items():
        lines += [f"## {gname}", ""] + group_table(runs, members) + [""]
    lines += ["## DLC corrections against no correction (paired by seed)", ""] + correction_lines(runs) + [""]
    lines += ["## Figures", ""]
    for title, name in figures(runs, doc.parent / "figures"):
        lines.append(f"![{title}](figures/{name})")
    body = "\n".join(lines) + "\n"
    notes = doc.with_name("RESULTS-notes.md")
    if notes.is_file():  # hand-written reading of the numbers, kept across regenerations
        body += "\n" + notes.read_text()
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(body)
    print(f"wrote {doc} ({sum(len(v) for v in runs.values())} runs of {len(runs)} rows)")
    return doc
