"""`megatron-rlvr bench kernels|train|rollout`: benchmarks that print baseline, ours and the ratio side by side.

`kernels` runs the fused DLC sampler benchmark (issue 4); `train` times one RL step per phase next to a plain
Megatron-Core language-model step (issue 8); `rollout` times SGLang decoding of the policy alone against DLC
inside the engine (issue 5; needs the SGLang environment). All need a CUDA GPU for meaningful numbers.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

TARGETS = {
    "kernels": ("megatron_rlvr.kernels.bench", "tools/bench_kernels.py"),
    "train": ("megatron_rlvr.bench_train", "tools/bench_train.py"),
    "rollout": ("megatron_rlvr.rollout.sglang.bench", None),
}


def _load(module: str, script: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
    path = Path(__file__).resolve().parents[1] / script if script else None  # source checkout (editable install)
    if path is None or not path.is_file():
        raise SystemExit(f"benchmark {module} not found (and no {script}); reinstall megatron-rlvr from source")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TARGETS:
        print("usage: megatron-rlvr bench {kernels,train,rollout} [options]   (--help after the target: its options)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "rollout" and importlib.util.find_spec("sglang") is None:
        raise SystemExit("bench rollout needs SGLang, which lives in its own environment: "
                         "bash tools/setup_sglang_env.sh, then .venv-sglang/bin/megatron-rlvr bench rollout ...")
    mod = _load(*TARGETS[argv[0]])
    return mod.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
