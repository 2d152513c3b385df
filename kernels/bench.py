"""Benchmarks stage: kernel micro-benchmarks (``megatron-rlvr bench kernels`` or ``python tools/bench_kernels.py``).

For each batch size at V = 151936 (Qwen3) this times, side by side in one run:
  * the fused kernel ``dlc_sample`` (lam > 0, log-probs of both distributions);
  * unfused PyTorch DLC: subtract, softmax, multinomial, log_softmax + gather for pi_cal and for the policy;
  * ``torch.compile`` of that unfused DLC (modes ``--compile-modes``), what a user would try first;
  * FlashInfer's fused sampling from logits on the policy alone (skipped with the reason if it cannot run);
  * unfused PyTorch policy-only sampling: softmax, multinomial;
and reports the achieved bandwidth of the fused kernel (both logit tensors read once), its fraction of the
device-to-device copy bandwidth measured in the same run, and each baseline's time / fused time. Each time is the
median over replays of a CUDA graph holding one call per rotating input set (enough sets to overflow L2, so every
call reads its logits from HBM), after warm-up. Before that it prints the eager host time per call (fast launch
vs Triton's JIT launch). Writes a CSV and a PNG plot; the last stdout line is one JSON object.
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
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .bench_baselines import unfused_dlc, unfused_policy

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _commit() -> str:
    """Short HEAD, with "+modified" when tracked files differ from it: the lent GPU machines get a copied working
    tree whose .git may be another checkout's (session 9's kernel rows said the main commit of an unmerged tree)."""
    where = Path(__file__).resolve().parent
    try:
        git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=where,  # noqa: E731
                                        timeout=10).stdout.strip()
        head = git("rev-parse", "--short", "HEAD")
        if not head:
            return "unknown"
        return f"{head}+modified" if git("status", "--porcelain", "--untracked-files=no") else head
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


def time_stream(fn: Callable[[int], object], n_sets: int, reps: int = 30) -> float:
    """Seconds per call of back-to-back eager calls between two events (for code a CUDA graph cannot capture)."""
    for i in range(n_sets):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for r in range(reps):
            fn(r % n_sets)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / reps)
    return statistics.median(times)


def _time_any(fn: Callable[[int], object], n_sets: int, replays: int) -> tuple[float, str]:
    """(seconds per call, how): in a CUDA graph if it can be captured, else as an eager stream of calls."""
    try:
        return time_graph(fn, n_sets, replays), "graph"
    except Exception:  # noqa: BLE001 - capture refused (e.g. a host sync inside): time it eagerly instead
        torch.cuda.synchronize()
        return time_stream(fn, n_sets), "eager"


def bench(batches: Sequence[int], vocab: int, dtype: torch.dtype, lam: float, temperature: float,
          replays: int, compile_modes: Sequence[str] = (), compile_budget_s: float = 120.0,
          flashinfer: Optional[object] = None, flashinfer_wait_s: float = 180.0,
          l2_bytes: int = 256 << 20, variants: Sequence[str] = (), variant_rounds: int = 3) -> tuple[list[dict], float]:
    from . import dlc_sample_launcher as launcher
    from .bench_baselines import compiled_dlc
    from .dlc_sample_launcher import dlc_sample

    bw = copy_bandwidth()
    dropped: dict = {}
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

        per_variant = {}
        if variants:
            # Kernel variants side by side (A/B), alternating so that drifts of the device hit each alike; the
            # first variant is the "fused" column, the median of its rounds.
            for _ in range(variant_rounds):
                for v in variants:
                    _use_variant(launcher, v)
                    per_variant.setdefault(v, []).append(time_graph(fused, n_sets, replays))
            _use_variant(launcher, variants[0])
            per_variant = {v: statistics.median(ts) for v, ts in per_variant.items()}
            t_fused = per_variant[variants[0]]
        else:
            t_fused = time_graph(fused, n_sets, replays)
        t_fused_eager = time_eager(fused, n_sets)
        t_dlc = time_graph(lambda i, s=sets: unfused_dlc(s[i][0], s[i][1], lam, temperature), n_sets, replays)
        t_pol = time_graph(lambda i, s=sets: unfused_policy(s[i][0], temperature), n_sets, replays)
        achieved = set_bytes / t_fused
        row = dict(
            batch=batch, vocab=vocab, dtype=str(dtype).replace("torch.", ""),
            unfused_dlc_ms=t_dlc * 1e3, unfused_policy_ms=t_pol * 1e3, fused_ms=t_fused * 1e3,
            fused_eager_ms=t_fused_eager * 1e3, fused_tb_s=achieved / 1e12, copy_tb_s=bw / 1e12,
            pct_of_copy=100 * achieved / bw, speedup_vs_dlc=t_dlc / t_fused, speedup_vs_policy=t_pol / t_fused,
        )
        for v, t in per_variant.items():
            row[f"fused_{v}_ms"], row[f"pct_of_copy_{v}"] = t * 1e3, 100 * set_bytes / t / bw
        for mode in compile_modes:
            key = f"compile_{mode.replace('-', '_')}"
            row[f"{key}_ms"] = None
            if mode in dropped:
                continue
            start = time.perf_counter()
            fn = compiled_dlc(mode)
            fn(*sets[0], lam, temperature)  # compiles this shape
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            t, how = _time_any(lambda i, s=sets, f=fn: f(s[i][0], s[i][1], lam, temperature), n_sets, replays)
            row[f"{key}_ms"], row[f"{key}_timing"], row[f"{key}_compile_s"] = t * 1e3, how, compile_s
            if compile_s > compile_budget_s:
                dropped[mode] = f"dropped after B={batch}: its compile took {compile_s:.0f} s > {compile_budget_s:.0f} s"
        row["flashinfer_policy_ms"] = None
        if flashinfer is not None and flashinfer.ready(flashinfer_wait_s):
            t, how = _time_any(lambda i, s=sets: flashinfer(s[i][0], i), n_sets, replays)
            row["flashinfer_policy_ms"], row["flashinfer_timing"] = t * 1e3, how
        # Last, since it overwrites the memory logits of the next set: a device copy moving the same bytes as the
        # fused kernel reads (half read, half written), rotating over the sets like every other column. A copy of
        # 156 MB pays a launch, ramp-up and tail too; the 2 GiB copy behind "% copy" hides those.
        t_copy = time_graph(lambda i, s=sets: s[(i + 1) % len(s)][1].copy_(s[i][0]), n_sets, replays)
        row["same_bytes_copy_ms"], row["pct_of_same_bytes_copy"] = t_copy * 1e3, 100 * t_copy / t_fused
        rows_out.append(row)
        print(f"B={batch}: fused {t_fused * 1e3:.4f} ms ({row['pct_of_copy']:.1f}% of copy bandwidth); " + ", ".join(
            f"{name} {row[k]:.4f} ms" for k, name in _BASELINES if row.get(k) is not None), flush=True)
        del sets
        torch.cuda.empty_cache()
    for mode, why in dropped.items():
        print(f"torch.compile mode {mode}: {why}")
    return rows_out, bw


_BASELINES = (("unfused_dlc_ms", "unfused DLC"), ("compile_default_ms", "compile"),
              ("compile_max_autotune_no_cudagraphs_ms", "compile max-at"), ("flashinfer_policy_ms", "FlashInfer pol"),
              ("unfused_policy_ms", "unfused policy"))


def _use_variant(launcher, variant: str) -> None:
    """Select a stage-1 kernel variant of the launcher (dlc_sample_launcher.VARIANTS) and drop compiled handles."""
    if variant not in launcher.VARIANTS:
        raise SystemExit(f"--variants: {variant!r} is not one of {launcher.VARIANTS}")
    launcher.VARIANT = variant
    launcher.clear_launch_caches()


def print_variant_table(rows: list[dict], variants: Sequence[str]) -> None:
    """The kernel variants side by side: ms and % of copy bandwidth each, and each one's time / the first's."""
    first = variants[0]
    print(f"\nkernel variants, same inputs, alternating rounds (median): x = variant ms / {first} ms")
    print(f"{'B':>5} " + " ".join(f"{v + ' ms (% copy)':>22}" for v in variants) +
          " " + " ".join(f"{'x ' + v:>10}" for v in variants[1:]))
    for r in rows:
        cells = [f"{r[f'fused_{v}_ms']:>12.4f} ({r[f'pct_of_copy_{v}']:>5.1f}%)" for v in variants]
        ratios = [f"{r[f'fused_{v}_ms'] / r[f'fused_{first}_ms']:>10.3f}" for v in variants[1:]]
        print(f"{r['batch']:>5} " + " ".join(f"{c:>22}" for c in cells) + " " + " ".join(ratios))
    for v in variants:
        fit = fixed_cost_fit(rows, f"fused_{v}_ms")
        if fit is not None:
            copy = rows[0]["copy_tb_s"] * 1e12
            print(f"{v}: time = {fit[0] * 1e6:.1f} us + bytes / {fit[1] / 1e12:.2f} TB/s ({100 * fit[1] / copy:.1f}% of "
                  f"copy), least squares over B >= 64")


def fixed_cost_fit(rows: list[dict], key: str = "fused_ms", min_batch: int = 64) -> Optional[tuple[float, float]]:
    """(seconds per call independent of the batch, bytes/s of the rest): a least-squares line of time vs bytes read
    over the batches >= min_batch. A one-pass kernel costs about bytes / rate plus a fixed part (launch, the first
    loads' latency, the serial tail after the loop); the fixed part is what limits the small batches."""
    pts = [(2 * r["batch"] * r["vocab"] * _bytes_per(r["dtype"]), r[key] * 1e-3) for r in rows
           if r["batch"] >= min_batch and r.get(key) is not None]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return my - slope * mx, (1.0 / slope if slope > 0 else math.inf)


def _bytes_per(dtype: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]


def print_same_bytes_table(rows: list[dict]) -> None:
    """The fused kernel next to a device copy that moves the same bytes (rows without one are left out): the
    bandwidth a pure copy reaches at this size, fixed costs included."""
    rows = [r for r in rows if r.get("same_bytes_copy_ms")]
    if not rows:
        return
    print("\nsame-bytes copy: copy_ of one (B, V) logit tensor into another (reads B*V, writes B*V elements)")
    print(f"{'B':>5} {'fused ms':>9} {'copy ms':>9} {'copy / fused':>13}")
    for r in rows:
        print(f"{r['batch']:>5} {r['fused_ms']:>9.4f} {r['same_bytes_copy_ms']:>9.4f} "
              f"{r['pct_of_same_bytes_copy'] / 100:>13.3f}")
    fit = fixed_cost_fit(rows, key="same_bytes_copy_ms")
    if fit is not None:
        print(f"copy: time = {fit[0] * 1e6:.1f} us + bytes / {fit[1] / 1e12:.2f} TB/s, least squares over B >= 64")


def _print_table(rows: list[dict]) -> list[str]:
    """The side-by-side table: fused time and bandwidth, then each baseline's ms and its time / fused time.

    Returns the failures of "the fused kernel beats every baseline at every batch" (empty if it does).
    """
    cols = [(k, name) for k, name in _BASELINES if any(r.get(k) is not None for r in rows)]
    print(f"{'B':>5} {'fused ms':>9} {'TB/s':>6} {'% copy':>7} {'eager ms':>9} " +
          " ".join(f"{name + ' ms (x)':>22}" for _, name in cols))
    losses = []
    for r in rows:
        cells = []
        for k, name in cols:
            v = r.get(k)
            cells.append(f"{'-':>22}" if v is None else f"{v:>13.4f} ({v / r['fused_ms']:>5.1f}x)")
            if v is not None and v <= r["fused_ms"]:
                losses.append(f"B={r['batch']}: {name} {v:.4f} ms <= fused {r['fused_ms']:.4f} ms")
        print(f"{r['batch']:>5} {r['fused_ms']:>9.4f} {r['fused_tb_s']:>6.2f} {r['pct_of_copy']:>6.1f}% "
              f"{r['fused_eager_ms']:>9.4f} " + " ".join(cells))
    return losses


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


def _set_rule(text: str) -> None:
    """Set the launcher's rule constants from "P,MIN,TILE,LARGE,WPC" (for confirming a sweep's candidate)."""
    from . import dlc_sample_launcher as launcher

    names = ("PROGRAMS_PER_SM", "MIN_CHUNKS_PER_SPLIT", "MAX_TILE_CHUNKS", "LARGE_BATCH_TILE_CHUNKS", "WARPS_PER_CHUNK")
    parts = text.replace("(", "").replace(")", "").split(",")
    if len(parts) != len(names):
        raise SystemExit(f"--rule needs {len(names)} comma-separated numbers ({','.join(names)}), got {text!r}")
    for name, part in zip(names, parts):
        value = float(part)
        setattr(launcher, name, int(value) if value.is_integer() else value)
    launcher.clear_launch_caches()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-rlvr bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,32,256,512,1024", help="comma-separated batch sizes")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--lam", type=float, default=0.5, help="DLC balance factor lambda")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--replays", type=int, default=30, help="timed graph replays per measurement")
    parser.add_argument("--compile-modes", default="default,max-autotune-no-cudagraphs",
                        help="torch.compile modes of the unfused DLC baseline ('' for none)")
    parser.add_argument("--compile-budget-s", type=float, default=90.0,
                        help="drop a compile mode for later batches once one of its compiles took longer")
    parser.add_argument("--no-flashinfer", action="store_true", help="skip the FlashInfer policy-only baseline")
    parser.add_argument("--skip-host", action="store_true", help="skip the eager host-time table")
    parser.add_argument("--host-breakdown", action="store_true",
                        help="also time the parts of one eager call alone (allocations, launcher, stream query)")
    parser.add_argument("--variants", default="",
                        help="comma-separated stage-1 kernel variants to time side by side, e.g. lean,plain (the first "
                             "is the fused column; default: the launcher's variant only)")
    parser.add_argument("--variant-rounds", type=int, default=3, help="alternating timing rounds per variant")
    parser.add_argument("--rule", default=None, metavar="P,MIN,TILE,LARGE,WPC",
                        help="launch-rule constants for this run (programs per SM, min chunks per split, max tile, "
                             "large-batch tile, warps per chunk), e.g. a row of the sweep's rule candidates")
    # Tuning aid (see bench_sweep.py): every launch setting per batch, then the rule candidates scored.
    parser.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=os.environ.get("OUT", "runs/bench_kernels"),
                        help="where the CSV and PNG go")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench kernels needs a CUDA GPU: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    from .bench_baselines import FlashInferPolicy, host_overhead_table, print_host_table

    batches = [int(b) for b in args.batches.split(",") if b]
    dtype = _DTYPES[args.dtype]
    if args.rule:
        _set_rule(args.rule)
    device = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    date, commit = datetime.date.today().isoformat(), _commit()
    from . import dlc_sample_launcher as launcher

    print(f"device: {device} ({props.multi_processor_count} SMs, L2 {props.L2_cache_size >> 20} MiB)   "
          f"torch {torch.__version__}   date: {date}   commit: {commit}   launch rule "
          f"(programs/SM, min chunks/split, max tile, large-batch tile, warps/chunk) = {launcher._settings()}   "
          f"kernel variant: {launcher.VARIANT}",
          flush=True)
    # Host time first, before FlashInfer's JIT build starts in its child process: the build's compilers share the
    # CPU, and on an H200 host the same eager call read 51.7 us during it and 37.4 us after it.
    host = [] if args.skip_host else host_overhead_table(args.vocab, dtype)
    if host:
        print_host_table(host)
    if args.host_breakdown:
        from .bench_baselines import host_breakdown, print_host_breakdown

        print_host_breakdown(host_breakdown(args.vocab, dtype))
    flashinfer = None if (args.no_flashinfer or args.sweep) else FlashInferPolicy()
    if args.sweep:
        from .bench_sweep import run_sweep

        bw = copy_bandwidth()
        print(f"\ncopy bandwidth (read+write): {bw / 1e12:.2f} TB/s")
        run_sweep(batches, args.vocab, dtype, args.lam, args.replays, time_graph, bw)
        return 0
    modes = [m for m in args.compile_modes.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in launcher.VARIANTS:
            raise SystemExit(f"--variants: {v!r} is not one of {launcher.VARIANTS}")
    rows, bw = bench(batches, args.vocab, dtype, args.lam, args.temperature, args.replays, modes,
                     args.compile_budget_s, flashinfer, variants=variants, variant_rounds=args.variant_rounds)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"\ncopy bandwidth (read+write): {bw / 1e12:.2f} TB/s")
    if flashinfer is not None and flashinfer.fn is None:
        print(f"FlashInfer baseline skipped: {flashinfer.reason}")
    losses = _print_table(rows)
    fit = fixed_cost_fit(rows)
    if fit is not None:
        print(f"fused: time = {fit[0] * 1e6:.1f} us + bytes / {fit[1] / 1e12:.2f} TB/s ({100 * fit[1] / bw:.1f}% of copy), "
              "least squares over B >= 64 (the fixed part is what keeps small batches below copy bandwidth)")
    print_same_bytes_table(rows)
    if variants:
        print_variant_table(rows, variants)
    print("fused faster than every baseline at every batch: " + ("yes" if not losses else "NO: " + "; ".join(losses)))
    csv_path = out_dir / "bench_kernels.csv"
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["device", "date", "commit", *fields], restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({"device": device, "date": date, "commit": commit, **r})
    png_path = out_dir / "bench_kernels.png"
    _plot(rows, png_path, device)
    print(f"wrote {csv_path} and {png_path}")
    rnd = lambda d: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}  # noqa: E731
    print(json.dumps({"device": device, "date": date, "commit": commit, "copy_tb_s": bw / 1e12,
                      "host": [rnd(h) for h in host], "rows": [rnd(r) for r in rows]}))
    return 0
