"""Toy over-sharpening study, driver stage: run every setting of the paper's figures 1, 2, 4, 5 and 6, then
write the PNGs, `stats.json` and `stats.md` (the table the README includes).

    python -m examples.toy_softmax --out outputs/toy_softmax          # full study (>= 20 seeds, 500 steps)
    python examples/toy_softmax/run.py --out DIR --seeds 8 --steps 100 # quick look
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # `python examples/toy_softmax/run.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from examples.toy_softmax.sim import SIAMESE_VARIANTS, ToyConfig, ToyResult, run_toy, summarize

GROUP_SIZES = (4, 8, 16, 32)
BASE_ESTIMATORS = ("raw", "mean", "grpo")  # paper Fig 1: raw, mean-shifted, normalized
ADVANCED_ESTIMATORS = ("rloo", "reinforce_pp_baseline")  # paper Fig 4
CALIBRATION_GROUP = 8
# DLC settings of Fig 6 (memory lr relative to the policy's, balance factor lambda); README explains the choice
DLC_LAMBDA = 2.0
MEMORY_LR_FACTOR = 1.0
TIS_CAP = 2.0
LR_SWEEP = {"sgd": (1.0, 2.0, 4.0, 10.0), "adamw": (0.1, 0.3, 1.0)}


def study_configs(seeds: int, steps: int) -> dict[str, list[ToyConfig]]:
    """Settings per figure; identical settings appear once in the run and may be shared by several figures."""
    base = ToyConfig(seeds=seeds, steps=steps)
    figs: dict[str, list[ToyConfig]] = {}
    figs["fig1"] = [replace(base, estimator=e, group_size=g) for e in BASE_ESTIMATORS for g in GROUP_SIZES]
    figs["fig4"] = [replace(base, estimator=e, group_size=g) for e in ADVANCED_ESTIMATORS for g in GROUP_SIZES]
    figs["fig2"] = [replace(base, estimator="grpo", group_size=g) for g in (4, 8, 32)]
    figs["fig5"] = [
        replace(base, estimator="grpo", group_size=g, optimizer=o) for o in ("sgd", "momentum", "adamw") for g in GROUP_SIZES
    ]
    fig6 = []
    for opt in ("sgd", "adamw"):
        b = replace(base, estimator="grpo", group_size=CALIBRATION_GROUP, optimizer=opt)
        mem_lr = b.resolved_lr() * MEMORY_LR_FACTOR
        dlc = dict(dlc_lambda=DLC_LAMBDA, memory_lr=mem_lr)
        fig6 += [
            b,
            replace(b, iac_alpha=1.0),
            replace(b, iac_alpha=1.0, **dlc),
            replace(b, **dlc, tis_cap=TIS_CAP),
            replace(b, iac_alpha=1.0, **dlc, tis_cap=TIS_CAP),
        ]
    figs["fig6"] = fig6
    figs["lr_sweep"] = [
        replace(base, estimator="grpo", group_size=CALIBRATION_GROUP, optimizer=o, lr=lr)
        for o, lrs in LR_SWEEP.items()
        for lr in lrs
    ]
    return figs


def _key(cfg: ToyConfig) -> tuple:
    return tuple(sorted(asdict(replace(cfg, lr=cfg.resolved_lr())).items()))


def run_study(seeds: int, steps: int, log=print) -> tuple[dict[str, list[ToyConfig]], dict[tuple, ToyResult]]:
    figs = study_configs(seeds, steps)
    results: dict[tuple, ToyResult] = {}
    for cfgs in figs.values():
        for cfg in cfgs:
            k = _key(cfg)
            if k not in results:
                t0 = time.perf_counter()
                results[k] = run_toy(cfg)
                log(f"  {cfg.label():50s} lr={cfg.resolved_lr():g}  {time.perf_counter() - t0:5.1f}s")
    return figs, results


def siamese_summary(result: ToyResult) -> dict:
    """Held-out Siamese query: final p(Siamese label) and p(correct = Cat or Siamese), medians over seeds."""
    out = {}
    for name in SIAMESE_VARIANTS:
        p = result.siamese_probs[name]
        out[name] = {
            "initial_p_siamese": float(p[0, :, 3].median()),
            "final_p_siamese_median": float(p[-1, :, 3].median()),
            "final_p_correct_median": float((p[-1, :, 0] + p[-1, :, 3]).median()),
        }
    return out


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| figure | setting | lr | collapsed / seeds | collapse step median [q25, q75] | min-max "
        "| final minority p (median) |\n|---|---|---|---|---|---|---|\n"
    )

    def fmt(v):
        return "never" if v is None else f"{v:.0f}"

    lines = []
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['label']} | {r['lr']:g} | {r['collapsed']} / {r['seeds']} | "
            f"{fmt(r['collapse_step_median'])} [{fmt(r['collapse_step_q25'])}, {fmt(r['collapse_step_q75'])}] | "
            f"{fmt(r['collapse_step_min'])}-{fmt(r['collapse_step_max'])} | {r['final_minority_correct_median']:.3g} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/toy_softmax"), help="output folder (created)")
    ap.add_argument("--seeds", type=int, default=24, help="independent runs per setting (>= 20 for the study)")
    ap.add_argument("--steps", type=int, default=500, help="RLVR steps per run")
    ap.add_argument("--no-plots", action="store_true", help="only write stats.json / stats.md")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        ap.error("--seeds and --steps must be >= 1")
    torch.set_num_threads(1)  # the runs are tiny; threads only add overhead on a shared 2-core machine
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    print(f"toy softmax study: {args.seeds} seeds x {args.steps} steps per setting")
    figs, results = run_study(args.seeds, args.steps)
    rows = []
    for fig, cfgs in figs.items():
        for cfg in cfgs:
            rows.append({"figure": fig, **summarize(results[_key(cfg)])})
    siamese = {f"G={c.group_size}": siamese_summary(results[_key(c)]) for c in figs["fig2"]}
    if not args.no_plots:
        from examples.toy_softmax.figures import write_figures

        for path in write_figures(figs, results, _key, args.out):
            print(f"  wrote {path}")
    elapsed = time.perf_counter() - t0
    stats = {
        "command": "python -m examples.toy_softmax " + " ".join(sys.argv[1:] if argv is None else argv),
        "seeds": args.seeds,
        "steps": args.steps,
        "elapsed_s": round(elapsed, 1),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "collapse_definition": "first step from which min(p(Cat), p(Persian)) on the Persian input stays < 0.01",
        "settings": rows,
        "siamese_heldout": siamese,
    }
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1))
    (args.out / "stats.md").write_text(markdown_table(rows))
    print(f"wrote {args.out / 'stats.json'} and stats.md in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
