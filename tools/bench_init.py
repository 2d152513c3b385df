"""Time to build (and initialise) a Qwen3 model with Megatron-Core: weights drawn on the CPU (`init_device=cpu`,
the default: the same seed gives the same model on every device) against drawn on the GPU (`init_device=device`).

    python tools/bench_init.py --preset qwen3-8b --dtype bfloat16

Prints one line per mode and the ratio; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build_seconds(preset: str, dtype: str, init_device: str) -> float:
    from megatron_rlvr.config import ModelConfig
    from megatron_rlvr.qwen3.shapes import get_preset
    from megatron_rlvr.qwen3.provider import build_gpt_model, resolve_dtype
    from megatron_rlvr.distributed.parallel import set_seed

    cfg = ModelConfig(preset=preset, dtype=dtype, init_device=init_device)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    set_seed(cfg.init_seed)
    model = build_gpt_model(get_preset(preset), cfg)
    for p in model.parameters():  # what TrainableModel does: cast, then move
        p.data = p.data.to(resolve_dtype(dtype))
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    dt = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen3-8b")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()
    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.config import ParallelConfig

    ctx = init_distributed({"policy": ParallelConfig()})
    times = {mode: build_seconds(args.preset, args.dtype, mode) for mode in ("device", "cpu")}
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    for mode, t in times.items():
        print(f"{args.preset} {args.dtype} init_device={mode}: {t:.1f} s ({dev}, {torch.get_num_threads()} threads)")
    print(f"cpu / device: {times['cpu'] / times['device']:.1f}x")
    print(json.dumps({"preset": args.preset, "dtype": args.dtype, "device": dev, "seconds": times}))
    ctx.destroy()


if __name__ == "__main__":
    main()
