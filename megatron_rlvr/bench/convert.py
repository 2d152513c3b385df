"""`megatron-rlvr bench convert`: peak memory of `convert from-hf` and `convert to-hf` on a full-size shape.

    megatron-rlvr bench convert --preset qwen3-1.7b --workdir /tmp/convert-mem

1. writes a Hugging Face folder of `--preset` with random bf16 weights, streaming (one tensor at a time),
2. runs ``megatron-rlvr convert from-hf`` and then ``convert to-hf`` on it, each as a child process, sampling the
   resident memory of the child's whole process tree (dist-checkpointing forks writer processes) every 50 ms,
3. checks that the exported tensors equal the random originals, and prints one JSON line.

Reported per conversion: ``peak_rss_main`` (the kernel's ru_maxrss of the converter process and the children it
waited for: the largest single process) and
``peak_pss_tree`` (peak of the summed proportional set size over the tree: shared copy-on-write pages counted
once), both also as a ratio of the model's bf16 size.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from megatron_rlvr.bench.harness import append_csv, emit, provenance
from megatron_rlvr.convert.hf_io import HFFolderWriter, atomic_output_dir
from megatron_rlvr.qwen3 import names as qwen3_map
from megatron_rlvr.qwen3.shapes import get_preset


def write_random_hf_folder(out: Path, preset: str, seed: int = 0) -> int:
    """A Hugging Face folder of `preset` with N(0, 0.02) bf16 weights; returns the weight bytes."""
    shape = get_preset(preset)
    gen = torch.Generator().manual_seed(seed)
    total = 0
    with atomic_output_dir(out, overwrite=True) as tmp:
        writer = HFFolderWriter(tmp, shape)
        for name, dims in qwen3_map.hf_shapes(shape).items():
            if len(dims) > 1:
                t = torch.randn(dims, generator=gen, dtype=torch.bfloat16).mul_(0.02)
            else:  # norms
                t = torch.ones(dims, dtype=torch.bfloat16)
            total += t.numel() * t.element_size()
            writer.add(name, t)
            del t
        writer.finish()
    return total


def run_measured(cmd: list[str]) -> dict:
    """Run `cmd`; peak RSS of the converter process (kernel ru_maxrss) and sampled peak summed PSS of its tree."""
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    main = psutil.Process(proc.pid)
    peak_pss = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            pss = 0
            for p in [main] + main.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    pss += p.memory_full_info().pss
            peak_pss = max(peak_pss, pss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return {"seconds": round(time.monotonic() - start, 1), "peak_rss_main": usage.ru_maxrss * 1024,
            "peak_pss_tree": peak_pss}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="megatron-rlvr bench convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen3-1.7b")
    p.add_argument("--workdir", type=Path, default=None, help="where the folders are written (default: a new "
                   "temporary folder; it needs about 3x the model's bf16 size)")
    p.add_argument("--keep", action="store_true", help="keep the written folders")
    p.add_argument("--out", type=Path, default=Path("runs/bench_convert"), help="folder of bench_convert.csv")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    model_bytes = write_random_hf_folder(work / "hf", args.preset)
    result = {**provenance(), "preset": args.preset, "model_bf16_bytes": model_bytes,
              "create_seconds": round(time.monotonic() - t0, 1)}
    cli = [sys.executable, "-m", "megatron_rlvr.cli", "convert"]
    result["from_hf"] = run_measured(cli + ["from-hf", "--hf", str(work / "hf"), "--out", str(work / "mcore"),
                                            "--overwrite"])
    result["to_hf"] = run_measured(cli + ["to-hf", "--ckpt", str(work / "mcore"), "--out", str(work / "hf_back"),
                                          "--overwrite"])
    from megatron_rlvr.convert.hf_io import read_index_tensors

    back = dict(read_index_tensors(work / "hf_back"))
    result["round_trip_bit_identical"] = all(torch.equal(t, back.pop(n)) for n, t in read_index_tensors(work / "hf"))
    result["round_trip_bit_identical"] &= not back
    for k in ("from_hf", "to_hf"):
        for m in ("peak_rss_main", "peak_pss_tree"):
            result[k][m + "_ratio"] = round(result[k][m] / model_bytes, 3)
    if not args.keep:
        shutil.rmtree(work)
    flat = {k: v for k, v in result.items() if not isinstance(v, dict)}  # the CSV row: one column per number
    flat.update({f"{k}_{m}": v for k in ("from_hf", "to_hf") for m, v in result[k].items()})
    append_csv(args.out / "bench_convert.csv", flat)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
