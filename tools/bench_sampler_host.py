"""Host time of ``dlc_sample``'s Python path on the CPU, without a GPU: everything up to Triton's C launcher.

    python tools/bench_sampler_host.py [--batches 1,256] [--calls 20000] [--rounds 7]

An eager decode step calls the sampler once per token, so its Python (argument checks, plan look-up, output
allocation, the cached-handle launch's argument tuple) is host time the GPU waits for at small batches. This runs
the real ``dlc_sample`` on CPU tensors with the GPU's launch plan (132 SMs) and a compiled handle found for every
call, whose ``run`` (the C launcher and cuLaunchKernel on a GPU) does nothing; CUDA allocations cost more than
the CPU ones timed here. Prints microseconds per call (median of rounds) in the engines' three call styles; compare
two trees by running it from each. ``tools/bench_kernels.py`` measures the whole eager call on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


class _NoLaunch:
    """A compiled handle whose launcher does nothing (the attributes CachedKernel.launch reads)."""

    function = 1
    packed_metadata = (4, 1, 0)

    def run(self, *args) -> None:
        return None


class _EveryKey(dict):
    def get(self, key, default=None):
        return _HANDLE


_HANDLE = _NoLaunch()


def _stub_gpu(launcher, launch_cache) -> None:
    counters = torch.zeros(4096, dtype=torch.int32)
    launcher._split_plan = lambda r, v, o, d: launcher.launch_plan(r, v, o, 132, *launcher._settings())
    launcher._arrival_counters = lambda rows, device: counters
    launcher.resolve_backend = lambda tensor, backend: "triton"
    launch_cache._hooks_active = lambda: False  # on a GPU: two attribute reads of triton.knobs
    for kernel in (launcher.STAGE1, launcher.THRESHOLD):
        kernel._handles = _EveryKey()
        kernel._stream = lambda device: 0


def call_styles(launcher, rows: int, vocab: int = 151936) -> dict:
    """The engines' calls (as kernels/bench_baselines.py's host table): embedded engine, SGLang sampler, with tau."""
    zp = torch.randn(rows, vocab).to(torch.bfloat16)
    zm = torch.randn(rows, vocab).to(torch.bfloat16)
    seeds = torch.arange(rows)
    lam_t, temp_t = torch.full((rows,), 0.5), torch.ones(rows)
    off_t = torch.zeros(rows, dtype=torch.int64)
    sample = launcher.dlc_sample
    return {
        "embedded engine": lambda i: sample(zp, zm, lam=0.5, temperature=1.0, seed=seeds, offset=i,
                                            return_entropy=True, check_nan=False),
        "sglang sampler": lambda i: sample(zp, zm, lam=lam_t, temperature=temp_t, seed=seeds, offset=off_t,
                                           return_entropy=True, check_nan=False),
        "with tau=0.05": lambda i: sample(zp, zm, lam=0.5, seed=seeds, offset=i, tau=0.05, check_nan=False),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--calls", type=int, default=20000, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    from megatron_rlvr.kernels import dlc_sample_launcher as launcher
    from megatron_rlvr.kernels import launch_cache

    _stub_gpu(launcher, launch_cache)
    print(f"dlc_sample host path on the CPU, C launcher stubbed ({Path(launcher.__file__).resolve().parent})")
    for rows in (int(b) for b in args.batches.split(",") if b):
        for name, call in call_styles(launcher, rows).items():
            for i in range(500):
                call(i)
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                for i in range(args.calls):
                    call(i)
                times.append((time.perf_counter() - start) / args.calls * 1e6)
            times.sort()
            print(f"B={rows:<5} {name:<16} {times[len(times) // 2]:6.2f} us per call "
                  f"(median of {args.rounds} x {args.calls}; min {times[0]:.2f}, max {times[-1]:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
