"""Rollout stage, dedicated rollout server: one SGLang server serving a run's DLC model on this node.

    python -m megatron_rlvr.rollout.server CONFIG.yaml [key=value ...] [--host 0.0.0.0] [--port 30000]
    python -m megatron_rlvr.rollout.server CONFIG.yaml --dry-run          # print the SGLang command only

What `megatron-rlvr launch --rollout-nodes N` runs on each rollout node. It writes the DLC model folder for the
config's policy and memory presets (the policy alone with dlc.enabled=false) under
`<run_dir>/rollout_server/<host>-<port>/` (random weights: the trainer pushes both models' real weights right after
it attaches, and after every step, over the weight-sync group of
`megatron_rlvr.weight_sync.Broadcast`), then becomes `python -m sglang.launch_server` for that folder. Options in
`rollout.sglang` are passed on as SGLang flags (`tp_size: 8` -> `--tp-size 8`, `true` -> a bare flag); without
`tp_size` the server uses all GPUs of the node.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Optional, Sequence

from megatron_rlvr.config import ConfigError, load_config


def sglang_flags(options: dict) -> list[str]:
    """rollout.sglang options as `sglang.launch_server` flags."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            flags += [flag, *[str(v) for v in value]]
        else:
            flags += [flag, str(value)]
    return flags


def server_argv(cfg, host: str, port: int, device: str, workdir: Optional[Path] = None) -> tuple[list[str], Path]:
    """(argv of the SGLang server, its model folder) for a validated RunConfig; writes the folder."""
    import torch

    from megatron_rlvr.qwen3.shapes import get_preset
    from megatron_rlvr.rollout.engine import served_memory_shape
    from megatron_rlvr.rollout.sglang import build_model_dir
    from megatron_rlvr.rollout.sglang.remote import server_command

    folder = workdir or Path(cfg.run_dir) / "rollout_server" / f"{socket.gethostname()}-{port}"
    model_dir = build_model_dir(folder / "model", get_preset(cfg.policy.preset), served_memory_shape(cfg),
                                dtype="bfloat16" if device == "cuda" else "float32")
    options = dict(cfg.rollout.sglang)
    options.setdefault("load_format", "dummy")
    if device == "cuda":
        options.setdefault("tp_size", torch.cuda.device_count())
    return server_command(str(model_dir), port, host=host, device=device, extra=sglang_flags(options)), model_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megatron_rlvr.rollout.server", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="the run's YAML config (the trainer's, so both sides agree on the models)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, as for `megatron-rlvr train`")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--workdir", type=Path, default=None, help="model folder location (default under run_dir)")
    ap.add_argument("--dry-run", action="store_true", help="write the model folder, print the command, exit")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"rollout server: {e}", file=sys.stderr)
        return 2
    import torch

    from megatron_rlvr.rollout.sglang.remote import server_env

    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv_, model_dir = server_argv(cfg, args.host, args.port, device, args.workdir)
    env = dict(os.environ, **server_env(device))
    print(f"rollout server: model folder {model_dir}", flush=True)
    print("rollout server: " + " ".join(shlex.quote(a) for a in argv_), flush=True)
    if args.dry_run:
        return 0
    os.execvpe(argv_[0], argv_, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
