"""Scale-out plan of a recipe on 1-4 nodes of 8 GPUs: engines, prompts per engine, bytes moved per weight push,
and (given measured single-GPU figures) the expected step time. Pure arithmetic over the Qwen3 shapes and the
rollout layout the trainer uses (`megatron_rlvr.rollout.layout`); docs/SCALING.md prints its output.

    python tools/scaling_plan.py                                     # layouts and bytes of the 4B/8B/14B recipes
    python tools/scaling_plan.py --bench runs/bench_train/bench_train_sglang.csv   # + expected step times

--bench reads the last row of `megatron-rlvr bench train --engine sglang`'s CSV: one engine's rollout tokens/s
and the single-GPU policy/memory update times (scaled per token to the recipe's model sizes by parameter count,
a first-order estimate: update cost ~ 6 x params x tokens); the push time scales with bytes.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_rlvr.qwen3.names import hf_shapes  # noqa: E402
from megatron_rlvr.qwen3.shapes import get_preset  # noqa: E402
from megatron_rlvr.recipes import get_recipe  # noqa: E402
from megatron_rlvr.rollout.layout import RolloutLayout  # noqa: E402

RECIPES = ("qwen3_4b_iac_dlc", "qwen3_8b_iac_dlc", "qwen3_14b_iac_dlc")
BYTES_BF16 = 2


def params(preset: str) -> int:
    return sum(math.prod(s) for s in hf_shapes(get_preset(preset)).values())


def plan(recipe: str, nodes: int, gpus: int = 8, rollout_tp: int = 1) -> dict:
    cfg = get_recipe(recipe)
    world = nodes * gpus
    layout = RolloutLayout(world, tp=rollout_tp)
    groups = cfg.rollout.prompts_per_step
    per_engine = max(len(layout.shard(groups, k)) for k in range(layout.num_engines))
    p, m = params(cfg.policy.preset), params(cfg.memory.preset)
    push = (p + m) * BYTES_BF16
    return {
        "recipe": recipe, "nodes": nodes, "gpus": world, "engines": layout.num_engines,
        "groups_per_engine": per_engine, "seqs_per_engine": per_engine * cfg.rollout.group_size,
        "policy_params": p, "memory_params": m, "push_bytes_per_engine": push,
        # colocated: every engine maps its own rank's copy of the gathered stream (CUDA IPC, on-GPU copy);
        # dedicated: one broadcast from trainer rank 0 reaches every server rank over the network
        "colocated_bytes_per_step": push * layout.num_engines, "dedicated_bytes_per_step": push,
        "max_new_tokens": cfg.rollout.max_new_tokens, "policy_tp": cfg.policy.parallel.tp,
        # what each rank receives in the rollout all-gather (rollout/collect.py): every rank's padded block of
        # int64 (R + 3) and float32 (2R + 1) per sequence
        "gather_bytes_per_rank": world * per_engine * cfg.rollout.group_size * (
            (cfg.rollout.max_new_tokens + 3) * 8 + (2 * cfg.rollout.max_new_tokens + 1) * 4),
    }


def expected(row: dict, bench: dict) -> dict:
    """Step time from one GPU's measured figures (see the module docstring)."""
    tok_s = float(bench["sglang_dlc_on_rollout_tokens_per_s"])
    bench_p, bench_m = params(bench["policy"]), params(bench["memory"])
    n_tok_bench = math.prod(int(x) for x in bench["tokens"].strip("[]").split(","))
    per_tok_p = float(bench["sglang_dlc_on_policy_update_s"]) / (n_tok_bench * bench_p)
    per_tok_m = float(bench["sglang_dlc_on_memory_update_s"]) / (n_tok_bench * bench_m)
    # rollout: each engine decodes its sequences; tokens/s measured at the bench's (smaller) model, scaled by
    # the decode cost ratio (~ params of policy + memory)
    size_ratio = (row["policy_params"] + row["memory_params"]) / (bench_p + bench_m)
    rollout_s = row["seqs_per_engine"] * row["max_new_tokens"] / (tok_s / size_ratio)
    tokens = row["engines"] * row["seqs_per_engine"] * row["max_new_tokens"]
    update_s = tokens * (per_tok_p * row["policy_params"] + per_tok_m * row["memory_params"]) / row["gpus"]
    push_s = float(bench.get("push_s", 0.0)) * row["push_bytes_per_engine"] / max(float(bench.get("push_bytes", 1)), 1)
    return {"rollout_s": rollout_s, "update_s": update_s, "push_s": push_s, "step_s": rollout_s + update_s + push_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, help="CSV of `megatron-rlvr bench train --engine sglang`")
    ap.add_argument("--rollout-tp", type=int, default=1)
    args = ap.parse_args(argv)
    bench = None
    if args.bench:
        rows = list(csv.DictReader(args.bench.open()))
        bench = rows[-1]
        print(f"measured on {bench['device']} ({bench['date']}, commit {bench['commit']}): {args.bench}")
    head = (f"{'recipe':<20}{'nodes':>6}{'GPUs':>6}{'engines':>8}{'groups/eng':>11}{'seqs/eng':>9}"
            f"{'push GB/eng':>12}{'coloc GB/step':>14}{'dedic GB/step':>14}{'gather MB/rank':>15}")
    if bench:
        head += f"{'rollout s':>11}{'update s':>10}{'push s':>9}{'step s':>10}"
    print(head)
    for recipe in RECIPES:
        for nodes in (1, 2, 4):
            r = plan(recipe, nodes, rollout_tp=args.rollout_tp)
            line = (f"{recipe:<20}{nodes:>6}{r['gpus']:>6}{r['engines']:>8}{r['groups_per_engine']:>11}"
                    f"{r['seqs_per_engine']:>9}{r['push_bytes_per_engine'] / 1e9:>12.1f}"
                    f"{r['colocated_bytes_per_step'] / 1e9:>14.1f}{r['dedicated_bytes_per_step'] / 1e9:>14.1f}"
                    f"{r['gather_bytes_per_rank'] / 1e6:>15.0f}")
            if bench:
                e = expected(r, bench)
                line += f" {e['rollout_s']:>10.1f} {e['update_s']:>9.1f} {e['push_s']:>8.2f} {e['step_s']:>9.1f}"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
