"""Benchmarks stage: the launch-setting sweep of the fused DLC sampler (``python tools/bench_kernels.py --sweep``).

One run measures, per batch, every (splits, tile chunks, warps) the launch rule could pick, then scores each
candidate constant set of the rule (kernels/dlc_launch_rule.py) by its worst slowdown against the best measured
setting over all batches. Reading it: the "rule candidates" table at the end; its first row is the constant set
that comes closest to the best setting at every batch, the "shipped" row is the current constants.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch

from .dlc_launch_rule import LaunchPlan, launch_plan

# The candidate rules: programs per SM x tile caps x warps per chunk (min chunks per split stays 2).
PROGRAMS_PER_SM = (1, 2, 3, 4, 6, 8)
TILES = (1, 2, 4, 8)
WARPS_PER_CHUNK = (0.5, 1, 2)


def _warps_for(tile: int) -> list[int]:
    return sorted({max(1, int(tile * w)) for w in WARPS_PER_CHUNK})


def _splits_for(rows: int, vocab: int, sms: int) -> list[int]:
    """The split counts the candidate rules can produce for this batch."""
    return sorted({launch_plan(rows, vocab, 0, sms, p, 2, 1, 1, 1).splits for p in PROGRAMS_PER_SM})


def run_sweep(batches: Sequence[int], vocab: int, dtype: torch.dtype, lam: float, replays: int,
              time_graph: Callable, copy_bw: float) -> dict:
    """Time every candidate launch setting; returns {(rows, splits, tile, warps): seconds}."""
    from . import dlc_sample_launcher as launcher

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    results: dict = {}
    original = launcher._split_plan
    print(f"{'B':>5} {'splits':>6} {'prog/SM':>7} {'tile':>4} {'warps':>5} {'warps/SM':>8} {'fused ms':>9} "
          f"{'TB/s':>6} {'% copy':>7}")
    try:
        for rows in batches:
            set_bytes = 2 * rows * vocab * torch.tensor([], dtype=dtype).element_size()
            n_sets = max(2, min(512, math.ceil((256 << 20) / set_bytes)))
            g = torch.Generator(device="cuda").manual_seed(rows)
            sets = [((torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(dtype),
                     (torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(dtype)) for _ in range(n_sets)]
            seeds = torch.arange(rows, device="cuda")
            best = None
            for splits in _splits_for(rows, vocab, sms):
                n_chunks = -(-vocab // 1024)
                per_split = -(-n_chunks // splits)
                for tile in TILES:
                    if tile > 2 * per_split:
                        continue
                    for warps in _warps_for(tile):
                        base = launch_plan(rows, vocab, 0, sms, 1, 1, 1, 1, 1)
                        forced = LaunchPlan(base.chunk_lo, base.chunk_hi, splits, per_split, tile, warps)
                        launcher._split_plan = lambda r, v, o, d, p=forced: p
                        launcher.clear_launch_caches()
                        t = time_graph(lambda i, s=sets: launcher.dlc_sample(
                            s[i][0], s[i][1], lam=lam, seed=seeds, offset=i, check_nan=False), n_sets, replays)
                        results[(rows, splits, tile, warps)] = t
                        best = t if best is None else min(best, t)
                        print(f"{rows:>5} {splits:>6} {rows * splits / sms:>7.2f} {tile:>4} {warps:>5} "
                              f"{rows * splits * warps / sms:>8.1f} {t * 1e3:>9.4f} {set_bytes / t / 1e12:>6.2f} "
                              f"{100 * set_bytes / t / copy_bw:>6.1f}%", flush=True)
            print(f"{rows:>5} best {best * 1e3:.4f} ms = {100 * set_bytes / best / copy_bw:.1f}% of copy bandwidth")
            del sets
            torch.cuda.empty_cache()
    finally:
        launcher._split_plan = original
        launcher.clear_launch_caches()
    _score_rules(results, batches, vocab, sms, dtype, copy_bw)
    return results


def _score_rules(results: dict, batches: Sequence[int], vocab: int, sms: int, dtype: torch.dtype,
                 copy_bw: float) -> list:
    """Each candidate constant set's worst and mean slowdown vs the best measured setting, over the batches."""
    from . import dlc_sample_launcher as launcher

    best = {b: min(t for (r, *_), t in results.items() if r == b) for b in batches}
    shipped = (launcher.PROGRAMS_PER_SM, launcher.MIN_CHUNKS_PER_SPLIT, launcher.MAX_TILE_CHUNKS,
               launcher.LARGE_BATCH_TILE_CHUNKS, launcher.WARPS_PER_CHUNK)
    rows_out = []
    for pps, tile, large, wpc in itertools.product(PROGRAMS_PER_SM, TILES, TILES, WARPS_PER_CHUNK):
        consts = (pps, 2, tile, large, wpc)
        times = []
        for b in batches:
            p = launch_plan(b, vocab, 0, sms, *consts)
            t = results.get((b, p.splits, p.tile, p.num_warps))
            if t is None:
                break
            times.append(t)
        if len(times) == len(batches):
            ratios = [t / best[b] for t, b in zip(times, batches)]
            rows_out.append((max(ratios), sum(ratios) / len(ratios), consts, times))
    rows_out.sort(key=lambda r: (r[0], r[1]))
    elem = torch.tensor([], dtype=dtype).element_size()
    pct = lambda b, t: 100 * 2 * b * vocab * elem / t / copy_bw  # noqa: E731
    print("\nrule candidates (programs/SM, min chunks/split, max tile, large-batch tile, warps/chunk): worst and mean "
          "time / best over the batches, then % of copy bandwidth per batch " + ", ".join(f"B={b}" for b in batches))
    shown = rows_out[:10] + [r for r in rows_out if r[2] == shipped and r not in rows_out[:10]]
    for worst, mean, consts, times in shown:
        tag = " (shipped)" if consts == shipped else ""
        print(f"  {str(consts):<24} worst {worst:.3f} mean {mean:.3f}   " +
              " ".join(f"{pct(b, t):5.1f}%" for b, t in zip(batches, times)) + tag)
    print("  best measured per batch:            " + " ".join(f"{pct(b, best[b]):5.1f}%" for b in batches))
    return rows_out
