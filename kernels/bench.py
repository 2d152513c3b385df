"""Benchmarks stage: kernel micro-benchmarks (``megatron-rlvr bench kernels`` or ``python tools/bench_kernels.py``).

For each batch size at V = 151936 (Qwen3) this times, side by side in one run:
  * unfused PyTorch DLC: subtract, softmax, multinomial, log_softmax + gather for pi_cal and for the policy;
  * unfused PyTorch policy-only sampling: softmax, multinomial;
  * the fused kernel ``dlc_sample`` (lam > 0, log-probs of both distributions);
and reports the achieved bandwidth of the fused kernel (both logit tensors read once), its fraction of the
device-to-device copy bandwidth measured in the same run, and the speed-ups. Each time is the median over
replays of a CUDA graph holding one call per rotating input set (enough sets to overflow L2, so every call
reads its logits from HBM), after warm-up. Writes a CSV and a PNG plot; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written (median of reps)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return nbytes / statistics.median(times)


def time_graph(fn: Callable[[int], object], n_sets: int, replays: int = 30, warmup: int = 3) -> float:
    """Median seconds per call of fn(i), i over the input sets, captured as one CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(n_sets):  # compile, allocate, warm caches outside the capture
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_sets):
            fn(i)
    for _ in range(warmup):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / n_sets)
    return statistics.median(times)


def time_eager(fn: Callable[[int], object], n_sets: int, reps: int = 50) -> float:
    """Median seconds per call with events around each eager call (includes Python launch overhead)."""
    for i in range(n_sets):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for r in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(r % n_sets)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times)


def unfused_dlc(zp: torch.Tensor, zm: torch.Tensor, lam: float, temperature: float):
    z = (zp.float() - lam * zm.float()) / temperature
    tok = torch.multinomial(torch.softmax(z, dim=-1), 1)
    lp_cal = torch.log_softmax(z, dim=-1).gather(1, tok)
    lp_pol = torch.log_softmax(zp.float() / temperature, dim=-1).gather(1, tok)
    return tok, lp_cal, lp_pol


def unfused_policy(zp: torch.Tensor, temperature: float):
    return torch.multinomial(torch.softmax(zp.float() / temperature, dim=-1), 1)


def bench(batches: Sequence[int], vocab: int, dtype: torch.dtype, lam: float, temperature: float,
          replays: int, l2_bytes: int = 256 << 20) -> tuple[list[dict], float]:
    from .dlc_sample_launcher import dlc_sample

    bw = copy_bandwidth()
    rows_out = []
    for batch in batches:
        set_bytes = 2 * batch * vocab * torch.tensor([], dtype=dtype).element_size()
        n_sets = max(2, min(512, math.ceil(l2_bytes / set_bytes)))
        g = torch.Generator(device="cuda").manual_seed(batch)
        sets = [((torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype),
                 (torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype)) for _ in range(n_sets)]
        seeds = torch.arange(batch, device="cuda")

        def fused(i, s=sets):
            return dlc_sample(s[i][0], s[i][1], lam=lam, temperature=temperature, seed=seeds, offset=i,
                              check_nan=False)

        t_fused = time_graph(fused, n_sets, replays)
        t_fused_eager = time_eager(fused, n_sets)
        t_dlc = time_graph(lambda i, s=sets: unfused_dlc(s[i][0], s[i][1], lam, temperature), n_sets, replays)
        t_pol = time_graph(lambda i, s=sets: unfused_policy(s[i][0], temperature), n_sets, replays)
        achieved = set_bytes / t_fused
        rows_out.append(dict(
            batch=batch, vocab=vocab, dtype=str(dtype).replace("torch.", ""),
            unfused_dlc_ms=t_dlc * 1e3, unfused_policy_ms=t_pol * 1e3, fused_ms=t_fused * 1e3,
            fused_eager_ms=t_fused_eager * 1e3, fused_tb_s=achieved / 1e12, copy_tb_s=bw / 1e12,
            pct_of_copy=100 * achieved / bw, speedup_vs_dlc=t_dlc / t_fused, speedup_vs_policy=t_pol / t_fused,
        ))
        del sets
        torch.cuda.empty_cache()
    return rows_out, bw


def sweep(batches: Sequence[int], vocab: int, dtype: torch.dtype, lam: float, replays: int) -> None:
    """Tuning aid: the fused kernel alone under several launch settings (tile chunks, programs per SM)."""
    from . import dlc_sample_kernel, dlc_sample_launcher
    from .dlc_sample_launcher import dlc_sample

    settings = [(tile, pps, 10) for tile in (2, 4, 8) for pps in (1, 2, 3)]
    defaults = (dlc_sample_launcher.MAX_TILE_CHUNKS, dlc_sample_launcher.PROGRAMS_PER_SM,
                dlc_sample_kernel.PHILOX_ROUNDS, dlc_sample_launcher.LARGE_BATCH_TILE_CHUNKS)
    print(f"{'B':>5} {'tile':>4} {'prog/SM':>7} {'rounds':>6} {'fused ms':>9} {'TB/s':>6}")
    for batch in batches:
        set_bytes = 2 * batch * vocab * torch.tensor([], dtype=dtype).element_size()
        n_sets = max(2, min(512, math.ceil((256 << 20) / set_bytes)))
        sets = [((torch.randn(batch, vocab, device="cuda") * 3).to(dtype),
                 (torch.randn(batch, vocab, device="cuda") * 3).to(dtype)) for _ in range(n_sets)]
        for tile, pps, rounds in settings:
            dlc_sample_launcher.MAX_TILE_CHUNKS, dlc_sample_launcher.PROGRAMS_PER_SM = tile, pps
            dlc_sample_launcher.LARGE_BATCH_TILE_CHUNKS = tile
            dlc_sample_kernel.PHILOX_ROUNDS = rounds
            t = time_graph(lambda i, s=sets: dlc_sample(s[i][0], s[i][1], lam=lam, seed=1, offset=i,
                                                        check_nan=False), n_sets, replays)
            print(f"{batch:>5} {tile:>4} {pps:>7} {rounds:>6} {t * 1e3:>9.4f} {set_bytes / t / 1e12:>6.2f}")
        del sets
        torch.cuda.empty_cache()
    (dlc_sample_launcher.MAX_TILE_CHUNKS, dlc_sample_launcher.PROGRAMS_PER_SM,
     dlc_sample_kernel.PHILOX_ROUNDS, dlc_sample_launcher.LARGE_BATCH_TILE_CHUNKS) = defaults


def _print_table(rows: list[dict]) -> None:
    head = (f"{'B':>5} {'unfused DLC ms':>15} {'unfused policy ms':>18} {'fused ms':>9} {'fused eager ms':>15} "
            f"{'TB/s':>6} {'% copy':>7} {'x vs DLC':>9} {'x vs policy':>12}")
    print(head)
    for r in rows:
        print(f"{r['batch']:>5} {r['unfused_dlc_ms']:>15.4f} {r['unfused_policy_ms']:>18.4f} {r['fused_ms']:>9.4f} "
              f"{r['fused_eager_ms']:>15.4f} {r['fused_tb_s']:>6.2f} {r['pct_of_copy']:>6.1f}% "
              f"{r['speedup_vs_dlc']:>9.1f} {r['speedup_vs_policy']:>12.1f}")


def _plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("unfused_dlc_ms", "unfused PyTorch DLC"), ("unfused_policy_ms", "unfused PyTorch policy"),
                       ("fused_ms", "fused dlc_sample")):
        ax.plot(batches, [r[key] for r in rows], marker="o", label=label)
    roof = [2 * b * rows[0]["vocab"] * 2 / (rows[0]["copy_tb_s"] * 1e12) * 1e3 for b in batches]
    ax.plot(batches, roof, linestyle="--", color="gray", label="read both logits at copy bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (rows)")
    ax.set_ylabel("ms per sampling step")
    ax.set_title(f"DLC sampling, V={rows[0]['vocab']}, {rows[0]['dtype']}, {device}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-rlvr bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,32,256,1024", help="comma-separated batch sizes")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--lam", type=float, default=0.5, help="DLC balance factor lambda")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--replays", type=int, default=30, help="timed graph replays per measurement")
    parser.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)  # tuning aid, see sweep()
    parser.add_argument("--out-dir", default=os.environ.get("OUT", "runs/bench_kernels"),
                        help="where the CSV and PNG go")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench kernels needs a CUDA GPU: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.sweep:
        sweep(batches, args.vocab, _DTYPES[args.dtype], args.lam, args.replays)
        return 0
    device = torch.cuda.get_device_name()
    rows, bw = bench(batches, args.vocab, _DTYPES[args.dtype], args.lam, args.temperature, args.replays)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    commit = _commit()
    print(f"device: {device}   copy bandwidth (read+write): {bw / 1e12:.2f} TB/s   date: {date}   commit: {commit}")
    _print_table(rows)
    csv_path = out_dir / "bench_kernels.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["device", "date", "commit", *rows[0].keys()])
        writer.writeheader()
        for r in rows:
            writer.writerow({"device": device, "date": date, "commit": commit, **r})
    png_path = out_dir / "bench_kernels.png"
    _plot(rows, png_path, device)
    print(f"wrote {csv_path} and {png_path}")
    print(json.dumps({"device": device, "date": date, "commit": commit, "copy_tb_s": bw / 1e12,
                      "rows": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}))
    return 0
