"""Update stage: split a mini-batch's rows over data-parallel ranks and into micro-batches.

Two regimes (``algorithm.max_tokens_per_micro_batch``):

* 0 (default): rows are dealt to data-parallel ranks round-robin and cut into micro-batches of
  ``algorithm.micro_batch_size`` sequences, in order.
* N > 0: a token budget. Rows go to the data-parallel rank with the fewest tokens so far, longest first (greedy
  longest-processing-time, so every rank gets about the same work); on each rank, rows are placed first-fit,
  longest first, into micro-batches whose cost stays <= N. The cost of a micro-batch is the tokens the model
  processes: the sum of its rows' lengths when sequences are packed, rows x longest row when padded. A row longer
  than N gets a micro-batch of its own.

Every rank computes the same plan from the full mini-batch (all ranks hold it) and keeps its own part; ranks may
end up with different numbers of micro-batches (``TrainableModel.train_step`` allows that). The losses are
normalised by global token / sequence counts, so no plan changes the gradient beyond float rounding.
"""

from __future__ import annotations

from typing import Optional

import torch


def micro_batch_cost(lengths: torch.Tensor, packed: bool) -> int:
    """Tokens the model processes for rows of these `lengths` in one micro-batch."""
    if lengths.numel() == 0:
        return 0
    return int(lengths.sum()) if packed else int(lengths.numel() * lengths.max())


def _longest_first(rows: torch.Tensor, lengths: torch.Tensor) -> list[int]:
    # Stable on the row index, so equal lengths keep their order and every rank computes the same plan.
    return sorted(rows.tolist(), key=lambda r: (-int(lengths[r]), r))


def split_over_ranks(rows: torch.Tensor, lengths: torch.Tensor, world: int, balanced: bool) -> list[torch.Tensor]:
    """`rows` (indices into `lengths`) -> one index tensor per data-parallel rank (see module docstring)."""
    if world < 1:
        raise ValueError(f"data-parallel world size must be >= 1, got {world}")
    if not balanced:
        return [rows[r::world] for r in range(world)]
    load, share = [0] * world, [[] for _ in range(world)]
    for r in _longest_first(rows, lengths):
        k = min(range(world), key=lambda i: (load[i], len(share[i]), i))
        share[k].append(r)
        load[k] += int(lengths[r])
    return [torch.tensor(sorted(s), dtype=torch.long) for s in share]


def plan_micro_batches(rows: torch.Tensor, lengths: torch.Tensor, micro_batch_size: int, max_tokens: int,
                       packed: bool) -> list[torch.Tensor]:
    """This rank's `rows` -> micro-batches (index tensors): `micro_batch_size` rows each, or token-budgeted."""
    if max_tokens <= 0:
        return [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
    bins: list[list[int]] = []
    sums: list[int] = []  # tokens of each bin; rows come longest first, so a bin's first row is its longest
    for r in _longest_first(rows, lengths):
        n = int(lengths[r])
        for i, b in enumerate(bins):
            cost = sums[i] + n if packed else (len(b) + 1) * int(lengths[b[0]])
            if cost <= max_tokens:
                b.append(r)
                sums[i] += n
                break
        else:
            bins.append([r])
            sums.append(n)
    return [torch.tensor(sorted(b), dtype=torch.long) for b in bins]


def gather_micro_batch(idx: torch.Tensor, fields: dict, lengths: torch.Tensor, pack: bool, trim: bool) -> dict:
    """Rows `idx` of every (N, ...) tensor in `fields` (None values skipped). With `trim`, (N, L) fields are cut to
    the longest row of the micro-batch (the padding past it only costs compute: attention is causal). With `pack`,
    the micro-batch carries ``lengths`` and the model packs its rows (THD)."""
    sub_len = lengths[idx]
    width = int(sub_len.max()) if trim and len(idx) else None
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        v = v[idx]
        if width is not None and v.dim() == 2:
            v = v[:, :width]
        out[k] = v
    if pack:
        out["lengths"] = sub_len
    return out


def rank_micro_batches(model, rows: torch.Tensor, lengths: torch.Tensor, fields: dict[str, Optional[torch.Tensor]],
                       micro_batch_size: int, max_tokens: int = 0, pack: bool = False) -> list[dict]:
    """This data-parallel rank's micro-batches of the mini-batch `rows` (see the module docstring)."""
    from megatron.core import parallel_state

    with model.ctx.layout(model.name):
        rank, size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    budget = max_tokens > 0
    mine = split_over_ranks(rows, lengths, size, balanced=budget)[rank]
    plan = plan_micro_batches(mine, lengths, micro_batch_size, max_tokens, packed=pack)
    # Token-budgeted micro-batches drop the columns past their longest row (the fixed-size path keeps the
    # batch's width, so its numbers stay those of earlier releases).
    return [gather_micro_batch(idx, fields, lengths, pack=pack, trim=budget) for idx in plan]
