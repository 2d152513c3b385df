"""Scale-out plan of a recipe on 1-4 nodes of 8 GPUs: engines, prompts per engine, bytes moved per weight push,
and (given measured single-GPU figures) the expected step time. Pure arithmetic over the Qwen3 shapes and the
rollout layout the trainer uses (`megatron_rlvr.rollout.layout`); docs/SCALING.md prints its output.

    python tools/scaling_plan.py                                     # layouts and bytes of the 4B/8B/14B recipes
    python tools/scaling_plan.py --bench runs/bench_train/bench_train_sglang.csv   # + expected step times

--bench reads the last row of `megatron-rlvr bench train --engine sglang`'s CSV: one engine's rollout tokens/s
(scaled to the recipe by the bytes a decode step reads: both models' weights plus every running sequence's KV
cache in both, `decode_step_bytes`) and the single-GPU policy/memory update times (scaled per token to the
recipe's model sizes by parameter count, a first-order estimate: update cost ~ 6 x params x tokens); the push time
scales with bytes. First-order: no compute bound, no KV-capacity limit, every sequence runs to max_new_tokens.
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


def kv_bytes_per_token(preset: str) -> int:
    """bf16 K and V of one token over all layers. Qwen3-0.6B and -1.7B hold the same (28 layers x 8 KV heads x
    128), so a DLC engine caches about twice a policy-only engine's bytes per token, whatever the memory's size."""
    s = get_preset(preset)
    return 2 * s.num_hidden_layers * s.num_key_value_heads * s.head_dim * BYTES_BF16


def decode_step_bytes(policy: str, memory: str, seqs: int, mean_context: float) -> float:
    """Bytes one decode step of a DLC engine reads: both models' weights once, and every running sequence's KV
    cache in both models. At RL batch sizes and reasoning lengths the KV term dominates (session 11 on an H200:
    256 sequences x ~260 tokens already read more KV than weights), which is why DLC's rollout costs ~1.8x a
    policy-only rollout there and not the ratio of parameter counts."""
    return (params(policy) + params(memory)) * BYTES_BF16 + seqs * mean_context * (
        kv_bytes_per_token(policy) + kv_bytes_per_token(memory))


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
        "policy": cfg.policy.preset, "memory": cfg.memory.preset,
        # what each rank receives in the rollout all-gather (rollout/collect.py): every rank's padded block of
        # int64 (R + 3) and float32 (2R + 1) per sequence
        "gather_bytes_per_rank": world * per_engine * cfg.rollout.group_size * (
            (cfg.rollout.max_new_tokens + 3) * 8 + (2 * cfg.rollout.max_new_tokens + 1) * 4),
    }


def expected(row: dict, bench: dict, prompt_tokens: int = 256) -> dict:
    """Step time from one GPU's measured figures (see the module docstring)."""
    tok_s = float(bench["sglang_dlc_on_rollout_tokens_per_s"])
    bench_p, bench_m = params(bench["policy"]), params(bench["memory"])
    n_seq_bench, len_bench = (int(x) for x in bench["tokens"].strip("[]").split(","))
    n_tok_bench = n_seq_bench * len_bench
    per_tok_p = float(bench["sglang_dlc_on_policy_update_s"]) / (n_tok_bench * bench_p)
    per_tok_m = float(bench["sglang_dlc_on_memory_update_s"]) / (n_tok_bench * bench_m)
    # rollout: decode steps are bound by the bytes they read (weights + KV cache, decode_step_bytes). The bench
    # gives the bytes per second one engine reaches: its step reads `bench_bytes` and takes n_seq / tok_s seconds
    # (its prompts are a few tokens, so the mean context is about half the sequence length).
    bench_bytes = decode_step_bytes(bench["policy"], bench["memory"], n_seq_bench, len_bench / 2)
    bytes_per_s = bench_bytes * tok_s / n_seq_bench
    step_bytes = decode_step_bytes(row["policy"], row["memory"], row["seqs_per_engine"],
                                   prompt_tokens + row["max_new_tokens"] / 2)
    rollout_s = row["max_new_tokens"] * step_bytes / bytes_per_s
    tokens = row["engines"] * row["seqs_per_engine"] * row["max_new_tokens"]
    update_s = tokens * (per_tok_p * row["policy_params"] + per_tok_m * row["memory_params"]) / row["gpus"]
    push_s = float(bench.get("push_s", 0.0)) * row["push_bytes_per_engine"] / max(float(bench.get("push_bytes", 1)), 1)
    return {"rollout_s": rollout_s, "update_s": update_s, "push_s": push_s, "step_s": rollout_s + update_s + push_s,
            "decode_gb_per_step": step_bytes / 1e9}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, help="CSV of `megatron-rlvr bench train --engine sglang`")
    ap.add_argument("--rollout-tp", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=256, help="mean prompt length of the recipe's task")
    args = ap.parse_args(argv)
    bench = None
    if args.bench:
        rows = list(csv.DictReader(args.bench.open()))
        bench = rows[-1]
        print(f"measured on {bench['device']} ({bench['date']}, commit {bench['commit']}): {args.bench}")
    head = (f"{'recipe':<20}{'nodes':>6}{'GPUs':>6}{'engines':>8}{'groups/eng':>11}{'seqs/eng':>9}"
            f"{'push GB/eng':>12}{'coloc GB/step':>14}{'dedic GB/step':>14}{'gather MB/rank':>15}")
    if bench:
        head += f"{'decode GB/step':>15}{'rollout s':>11}{'update s':>10}{'push s':>9}{'step s':>10}"
    print(head)
    for recipe in RECIPES:
        for nodes in (1, 2, 4):
            r = plan(recipe, nodes, rollout_tp=args.rollout_tp)
            line = (f"{recipe:<20}{nodes:>6}{r['gpus']:>6}{r['engines']:>8}{r['groups_per_engine']:>11}"
                    f"{r['seqs_per_engine']:>9}{r['push_bytes_per_engine'] / 1e9:>12.1f}"
                    f"{r['colocated_bytes_per_step'] / 1e9:>14.1f}{r['dedicated_bytes_per_step'] / 1e9:>14.1f}"
                    f"{r['gather_bytes_per_rank'] / 1e6:>15.0f}")
            if bench:
                e = expected(r, bench, args.prompt_tokens)
                line += f"{e['decode_gb_per_step']:>15.1f} {e['rollout_s']:>10.1f} {e['update_s']:>9.1f} {e['push_s']:>8.2f} {e['step_s']:>9.1f}"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
