"""Rollout stage, token sampling: the launch rule of the fused DLC sampler (grid split, tile, warps).

The stage-1 kernel streams each row's logits once. A row is cut into ``splits`` id-ordered ranges of whole
1024-id chunks, one program each (grid rows x splits); each program walks its range ``tile`` chunks per loop
iteration with ``num_warps`` warps. The rule only looks at the shape and the device's SM count:

* splits: enough programs that every SM holds about ``programs_per_sm`` of them (small batches cannot fill the
  GPU with one program per row), but never fewer than ``min_chunks_per_split`` chunks per range (thinner ranges
  pay more in the per-range second sampling level and the merge than they gain);
* tile: up to ``max_tile_chunks`` chunks per iteration, ``large_batch_tile_chunks`` once rows alone give 4
  programs per SM (then many resident programs already keep loads in flight, and smaller tiles use fewer
  registers, so more of them fit);
* num_warps: ``warps_per_chunk`` warps per chunk of the tile (at least one).

``tools/bench_kernels.py --sweep`` measures the alternatives on a device and prints what this rule picks next to
the best measured setting (BENCHMARKS.md has the runs the constants come from).
"""

from __future__ import annotations

from typing import NamedTuple

CHUNK = 1024  # ids per first-level sampling chunk (dlc_sample_kernel.CHUNK)


class LaunchPlan(NamedTuple):
    """The launch shape of one stage-1 call."""

    chunk_lo: int  # first global chunk touched by this (shard of the) vocabulary
    chunk_hi: int  # one past the last
    splits: int  # programs per row
    per_split: int  # chunks per program
    tile: int  # chunks per loop iteration (a power of two)
    num_warps: int


def launch_plan(rows: int, vocab: int, vocab_offset: int, sms: int, programs_per_sm: float,
                min_chunks_per_split: int, max_tile_chunks: int, large_batch_tile_chunks: int,
                warps_per_chunk: float) -> LaunchPlan:
    """The rule described in the module docstring; valid (covers every chunk exactly once) for any inputs >= 1."""
    if rows < 1 or vocab < 1 or sms < 1:
        raise ValueError(f"launch_plan needs rows, vocab and sms >= 1, got {rows}, {vocab}, {sms}")
    chunk_lo = vocab_offset // CHUNK
    chunk_hi = -(-(vocab_offset + vocab) // CHUNK)
    n_chunks = chunk_hi - chunk_lo
    want = -(-int(programs_per_sm * sms) // rows)
    splits = max(1, min(-(-n_chunks // max(1, min_chunks_per_split)), want))
    per_split = -(-n_chunks // splits)
    splits = -(-n_chunks // per_split)  # no empty trailing split
    max_tile = large_batch_tile_chunks if rows >= 4 * sms else max_tile_chunks
    tile = 1
    while tile < min(per_split, max_tile):
        tile *= 2
    num_warps = max(1, int(tile * warps_per_chunk))
    return LaunchPlan(chunk_lo, chunk_hi, splits, per_split, tile, num_warps)
