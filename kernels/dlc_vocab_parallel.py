"""Rollout stage, token sampling: the vocabulary-parallel form of the DLC sampler (tensor-parallel logits).

Each tensor-parallel rank holds a contiguous vocabulary shard [vocab_offset, vocab_offset + V_local) of both
models' logits. Every rank runs the one-pass kernel on its shard (the RNG is keyed by global ids, so each id
sees the noise it would see unsharded), merges its splits into one partial per row, and one all_gather of
(B, 10) float64 values (eight statistics, the winner's id, the shard start) lets every rank merge the shards
in id order. The result is distributed as the unsharded sampler's. It is also the same token, up to float
rounding of near-ties, given explicit uniform_noise, or with the RNG when the shard boundaries are multiples
of 1024 ids (Qwen3's 151936 / TP 2 is not: the chunk cut by a boundary draws independent noise for its right
part, which keeps the distribution exact but changes which token a given seed yields). With tau, one extra
all_reduce(MAX) of (B,) policy maxima comes first.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from .dlc_sample_launcher import dlc_partials
from .dlc_sample_args import (DLCSampleOutput, FloatArg, IntArg, check_inputs, finalize_partials,
                              merge_partials, raise_on_invalid_rows)


def dlc_sample_vocab_parallel(
    policy_shard: torch.Tensor,
    memory_shard: Optional[torch.Tensor] = None,
    lam: FloatArg = 0.0,
    temperature: FloatArg = 1.0,
    seed: IntArg = 0,
    offset: IntArg = 0,
    tau: Optional[float] = None,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_offset: Optional[int] = None,
    return_entropy: bool = False,
    uniform_noise: Optional[torch.Tensor] = None,
    group: Optional[dist.ProcessGroup] = None,
    *,
    backend: Optional[str] = None,
    check_nan: bool = True,
) -> DLCSampleOutput:
    """``dlc_sample`` over a vocabulary sharded across ``group``; every rank gets the same (B,) outputs.

    vocab_offset: this rank's first global id; None means rank * V_local (equal shards, as Megatron's
    vocab-parallel embedding lays them out). uniform_noise, if given, is this shard's (B, V_local) slice.
    top_k / top_p are not supported here (their thresholds need the whole row): they raise ValueError.
    """
    check_inputs(policy_shard, memory_shard, lam, temperature, seed, offset, tau, top_k, top_p, uniform_noise)
    if top_k > 0 or top_p < 1.0:
        raise ValueError("dlc_sample_vocab_parallel supports tau but not top_k/top_p (their thresholds need the "
                         "whole row); gather the logits and call dlc_sample, or use tau")
    rank = dist.get_rank(group)
    rows, local_vocab = policy_shard.shape
    if vocab_offset is None:
        vocab_offset = rank * local_vocab

    threshold = None
    if tau is not None:
        row_max = policy_shard.amax(1).to(torch.float32)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        threshold = row_max + torch.tensor(math.log(tau), dtype=torch.float32, device=row_max.device)

    part_f, part_i = dlc_partials(policy_shard, memory_shard, lam, temperature, seed, offset, vocab_offset,
                                  uniform_noise, threshold, return_entropy=return_entropy, backend=backend)
    merged, token = merge_partials(part_f, part_i)
    shard_start = torch.full_like(token, vocab_offset, dtype=torch.float64)[:, None]
    packed = torch.cat([merged.to(torch.float64), token.to(torch.float64)[:, None], shard_start], dim=1)  # (B, 10)
    gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, packed, group=group)
    stacked = torch.stack(gathered, dim=1)  # (B, W, 10)
    # Shards in id order, so that ties resolve to the smallest global id as in the unsharded kernel.
    stacked = stacked[:, torch.argsort(stacked[0, :, 9])]
    merged, token = merge_partials(stacked[..., :8].to(torch.float32), stacked[..., 8].to(torch.int64))
    out = finalize_partials(merged, token, return_entropy)
    if check_nan:
        raise_on_invalid_rows(out)
    return out
