"""`megatron-rlvr bench kernels|train|rollout|convert`: benchmarks that print baseline, ours and the ratio side by side.

`kernels` runs the fused DLC sampler benchmark; `train` times whole RL steps per phase (the trainer's own
`megatron_rlvr.step.rl_step`, next to a plain Megatron-Core language-model step; with `--engine sglang`, SGLang with
DLC on and off next to the embedded engine, and the 8B + 1.7B weight push); `rollout` times SGLang decoding of the
policy alone against DLC inside the engine; `convert` measures the converters' peak memory. `rollout` and
`train --engine sglang` need the SGLang environment; `kernels` needs a CUDA GPU; `train` and `convert` also run on a
CPU (meaningful numbers need the GPU). All share `bench.harness` (timing, provenance row, CSV, final JSON line).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

TARGETS = {
    "kernels": ("megatron_rlvr.kernels.bench", "tools/bench_kernels.py"),
    "train": ("megatron_rlvr.bench.train", None),
    "rollout": ("megatron_rlvr.bench.rollout", None),
    "convert": ("megatron_rlvr.bench.convert", None),
}


def _load(module: str, script: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
    path = Path(__file__).resolve().parents[2] / script if script else None  # source checkout (editable install)
    if path is None or not path.is_file():
        raise SystemExit(f"benchmark {module} not found (and no {script}); reinstall megatron-rlvr from source")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TARGETS:
        print("usage: megatron-rlvr bench {kernels,train,rollout,convert} [options]   (--help after the target: its "
              "options)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    needs_sglang = argv[0] == "rollout" or (argv[0] == "train" and "sglang" in argv[1:])
    if needs_sglang and importlib.util.find_spec("sglang") is None:
        raise SystemExit(f"bench {' '.join(argv[:1])} with SGLang needs SGLang, which lives in its own environment: "
                         f"bash tools/setup_sglang_env.sh, then .venv-sglang/bin/megatron-rlvr bench {argv[0]} ... "
                         "(on the GPU device: bash tools/gpu_sglang.sh install first)")
    mod = _load(*TARGETS[argv[0]])
    return mod.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
