"""Command line: `megatron-rlvr train|convert|bench|launch`.

Each subcommand imports its stage lazily, so `--help` and config errors are instant (no Megatron import).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from megatron_rlvr.config import ConfigError, describe_tree, load_config

TRAIN_EPILOG = "config tree (override any leaf as key=value, e.g. dlc.lam=0.3 policy.parallel.tp=2):\n"


def _tree_help() -> str:
    rows = describe_tree()
    width = max(len(k) for k, _, _ in rows) + 2
    lines = []
    for key, default, doc in rows:
        indent = "  " * key.count(".")
        if default == "":
            lines.append(f"  {indent}{key.split('.')[-1]}:  # {doc}")
        else:
            lines.append(f"  {(indent + key.split('.')[-1]).ljust(width)} {default:<14} {doc}")
    return "\n".join(lines)


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="megatron-rlvr train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a Qwen3 policy with RLVR (IAC + DLC by default). With no arguments: the embedded CPU "
        "default (tiny Qwen3-shaped policy and memory model on the built-in multi-answer task).",
        epilog=TRAIN_EPILOG + _tree_help(),
    )
    p.add_argument("config", nargs="?", help="YAML config file (optional; defaults are the embedded CPU run)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--recipe", help="start from a recipe in megatron_rlvr.recipes / examples (e.g. tiny_cpu)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = p.parse_intermixed_args(argv)  # overrides may sit on both sides of a flag
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:  # only overrides were given
        overrides.insert(0, config_path)
        config_path = None
    try:
        base = None
        if args.recipe:
            from megatron_rlvr.recipes import get_recipe

            base = get_recipe(args.recipe)
        cfg = load_config(config_path, overrides, base=base)
    except (ConfigError, KeyError) as err:
        print(str(err).strip('"'), file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    from megatron_rlvr.errors import RunError
    from megatron_rlvr.tasks import DatasetError
    from megatron_rlvr.train import main as train_main

    try:
        return train_main(cfg) or 0
    except (ConfigError, DatasetError, RunError) as err:  # bad input or run-folder state the user fixes: one line
        print(str(err), file=sys.stderr)
        return err.exit_code if isinstance(err, RunError) else 2


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    mod = importlib.import_module(module)
    return mod.main(argv) or 0


SUBCOMMANDS = {
    "train": ("train a policy (the main job)", None),
    "convert": ("convert checkpoints: to-hf | from-hf", "megatron_rlvr.convert.cli"),
    "bench": ("benchmarks: kernels | train | rollout", "megatron_rlvr.bench"),
    "launch": ("launch training with nemo-run: --executor local|slurm", "megatron_rlvr.launch"),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: megatron-rlvr {train,convert,bench,launch} ...\n")
        for name, (doc, _) in SUBCOMMANDS.items():
            print(f"  {name:<8} {doc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown subcommand {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return _train(rest)
    return _delegate(SUBCOMMANDS[cmd][1], rest)


if __name__ == "__main__":
    sys.exit(main())
