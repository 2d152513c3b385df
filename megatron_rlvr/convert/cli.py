"""Conversion stage, command line: ``megatron-rlvr convert to-hf | from-hf``.

    megatron-rlvr convert to-hf --ckpt RUN_DIR/checkpoints --out hf/policy [--model policy|memory] [--step N]
    megatron-rlvr convert from-hf --hf Qwen3-1.7B --out ckpt/qwen3-1.7b --tp 2 --pp 2 [--preset qwen3-1.7b]

Bad input prints one line naming the problem and the fix, exits with status 2, and leaves no output folder.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Optional

import torch

from megatron_rlvr.convert import ConversionError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _size(text: str) -> int:
    """'2GB', '500MB', '1GiB' or a byte count -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2GB, 500MB or 1073741824")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index((m.group(2) or "_").upper()))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megatron-rlvr convert",
                                description="Convert Qwen3 checkpoints between Megatron and Hugging Face formats.")
    sub = p.add_subparsers(dest="command", required=True)
    to = sub.add_parser("to-hf", help="trainer checkpoint (any TP/PP) -> Hugging Face folder")
    to.add_argument("--ckpt", required=True, help="iter_XXXXXXX folder, a run's checkpoints folder (uses 'latest'), "
                    "a run folder with --step, or a model folder")
    to.add_argument("--out", required=True, help="Hugging Face output folder (written atomically)")
    to.add_argument("--model", default="policy", choices=("policy", "memory"), help="which model of the checkpoint")
    to.add_argument("--step", type=int, help="export <ckpt>/checkpoints/iter_{step:07d}")
    to.add_argument("--dtype", choices=sorted(_DTYPES), help="cast the weights (default: the checkpoint's dtype)")
    to.add_argument("--max-shard-size", type=_size, default="2GB", help="largest safetensors shard (default 2GB)")
    to.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    fr = sub.add_parser("from-hf", help="Hugging Face Qwen3 folder -> Megatron checkpoint for policy.init_from")
    fr.add_argument("--hf", required=True, help="Hugging Face model folder (config.json + safetensors)")
    fr.add_argument("--out", required=True, help="Megatron model folder to write (atomically)")
    fr.add_argument("--tp", type=int, default=1, help="tensor-parallel layout to write (loads under any layout)")
    fr.add_argument("--pp", type=int, default=1, help="pipeline-parallel layout to write")
    fr.add_argument("--preset", help="check that the model is this preset (e.g. qwen3-1.7b)")
    fr.add_argument("--dtype", choices=sorted(_DTYPES), help="cast the weights (default: the folder's dtype)")
    fr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    dtype = _DTYPES[args.dtype] if args.dtype else None
    try:
        if args.command == "to-hf":
            from megatron_rlvr.convert.to_hf import export_checkpoint

            out = export_checkpoint(args.ckpt, args.out, model=args.model, step=args.step, dtype=dtype,
                                    max_shard_bytes=args.max_shard_size, overwrite=args.overwrite)
        else:
            from megatron_rlvr.convert.from_hf import import_hf

            out = import_hf(args.hf, args.out, tp=args.tp, pp=args.pp, preset=args.preset, dtype=dtype,
                            overwrite=args.overwrite)
    except ConversionError as err:
        print(f"convert {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
