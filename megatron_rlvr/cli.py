"""Command line: `megatron-rlvr train|data|convert|bench|launch`.

Each subcommand imports its stage lazily, so `--help` and config errors are instant (no Megatron import).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from megatron_rlvr.config import ConfigError, RunConfig, describe_tree, load_config

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


def _train_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=description, epilog=TRAIN_EPILOG + _tree_help())
    p.add_argument("config", nargs="?", help="YAML config file (optional; defaults are the embedded CPU run)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--recipe", help="start from a recipe in megatron_rlvr.recipes / examples (e.g. tiny_cpu)")
    return p


def _load(args) -> "RunConfig | int":
    """The run config of parsed train options, or exit code 2 after printing the one-line config error."""
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:  # only overrides were given
        overrides.insert(0, config_path)
        config_path = None
    try:
        base = None
        if args.recipe:
            from megatron_rlvr.recipes import get_recipe

            base = get_recipe(args.recipe)
        return load_config(config_path, overrides, base=base)
    except (ConfigError, KeyError) as err:
        print(str(err).strip('"'), file=sys.stderr)
        return 2


def _train(argv: list[str]) -> int:
    p = _train_parser("megatron-rlvr train", "Train a Qwen3 policy with RLVR (IAC + DLC by default). With no "
                      "arguments: the embedded CPU default (tiny Qwen3-shaped policy and memory model on the "
                      "built-in multi-answer task).")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = p.parse_intermixed_args(argv)  # overrides may sit on both sides of a flag
    cfg = _load(args)
    if isinstance(cfg, int):
        return cfg
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


def _data(argv: list[str]) -> int:
    if not argv or argv[0] != "inspect":
        print("usage: megatron-rlvr data inspect [config.yaml] [key=value ...] [--recipe NAME]\n\n"
              "  inspect  load the configured dataset exactly as training would, print rows loaded / skipped, the "
              "first gold answer and the first rendered prompt, and exit", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    p = _train_parser("megatron-rlvr data inspect", "Load the training dataset of these train options exactly as "
                      "`megatron-rlvr train` would and show what the model sees; then exit (no model is built).")
    cfg = _load(p.parse_intermixed_args(argv[1:]))
    if isinstance(cfg, int):
        return cfg
    from megatron_rlvr.tasks import build_task
    from megatron_rlvr.tasks.inspect import describe
    from megatron_rlvr.tasks.layouts import DatasetError

    from megatron_rlvr.run.runtime import prompt_budget

    try:
        task = build_task(cfg.task, *prompt_budget(cfg))  # with the prompt-length check training applies
    except (DatasetError, ValueError, FileNotFoundError) as err:  # the one line training would stop with
        print(str(err), file=sys.stderr)
        return 2
    print(describe(task))
    from megatron_rlvr.config import eval_set_configs
    from megatron_rlvr.eval.heldout import build_eval_task

    for s in eval_set_configs(cfg):  # the held-out sets, read as the evaluation reads them
        try:
            es = build_eval_task(cfg.task, s, task.tokenizer)
        except (DatasetError, ValueError) as err:
            print(str(err), file=sys.stderr)
            return 2
        print(f"eval set {s.name}: {len(es.prompts)} rows ({es.num_skipped} skipped), {s.samples} samples each; "
              f"first gold answer {es.prompts[0].metadata['answer']}")
    pool = getattr(task, "pool", None)
    if pool is not None:
        pool.close()
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    mod = importlib.import_module(module)
    return mod.main(argv) or 0


SUBCOMMANDS = {
    "train": ("train a policy (the main job)", None),
    "data": ("data inspect <train options>: what the model sees, without training", None),
    "convert": ("convert checkpoints: to-hf | from-hf", "megatron_rlvr.convert.cli"),
    "bench": ("benchmarks: kernels | train | rollout", "megatron_rlvr.bench"),
    "launch": ("launch training with nemo-run: --executor local|slurm", "megatron_rlvr.launch"),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: megatron-rlvr {train,data,convert,bench,launch} ...\n")
        for name, (doc, _) in SUBCOMMANDS.items():
            print(f"  {name:<8} {doc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown subcommand {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return _train(rest)
    if cmd == "data":
        return _data(rest)
    return _delegate(SUBCOMMANDS[cmd][1], rest)


if __name__ == "__main__":
    sys.exit(main())
