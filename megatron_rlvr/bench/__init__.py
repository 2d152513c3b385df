"""Benchmarks, under one roof (`megatron-rlvr bench kernels|train|rollout|convert`); library packages hold none.

- `cli`: the `bench` command's dispatcher;
- `train`: whole RL steps per phase next to a plain Megatron-Core LM step (`packing`: the update stage at ragged
  lengths, padded vs packed vs plain);
- `rollout`: SGLang decode throughput, policy alone vs DLC inside the engine;
- `record`: the commit every CSV row and final JSON line carry.
"""

from megatron_rlvr.bench.cli import main

__all__ = ["main"]
