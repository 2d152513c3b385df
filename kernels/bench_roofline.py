"""Benchmarks stage: the read roofline of the fused sampler's own launch shape.

``read_both``: a Triton kernel that only streams what ``dlc_sample`` must read, both (B, V) logit tensors once,
with the sampler's grid (rows x vocabulary splits), tile and warps from the launch rule, and writes one float32
sum per (row, split). It does no sampling, no second level and no merge, so its time at a batch is what the
sampler's geometry costs before any of its own work: the sampler's "% of copy bandwidth" can only approach the
roofline's. The copy-bandwidth denominator is measured with a 2 GiB copy; at B = 256 the logits are 156 MB, and a
kernel's fixed costs (ramp-up, the last wave, the gap between graph nodes) weigh more there. ``read_both_reference``
is the PyTorch reference (the per-split sums), which the tests compare it with under the Triton interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dlc_launch_rule import CHUNK


@triton.jit
def read_both_kernel(p_ptr, m_ptr, out_ptr, stride_p, stride_m, V, per_split, n_splits, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split = tl.program_id(1)
    start = split * per_split
    end = tl.minimum(start + per_split, V)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        keep = idx < end
        acc += tl.load(p_ptr + row.to(tl.int64) * stride_p + idx, mask=keep, other=0.0).to(tl.float32)
        acc += tl.load(m_ptr + row.to(tl.int64) * stride_m + idx, mask=keep, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_splits + split, tl.sum(acc, axis=0))


def read_plan(rows: int, vocab: int, device: torch.device) -> tuple[int, int, int, int]:
    """(splits, ids per split, ids per loop iteration, num_warps): the sampler's launch shape for this call."""
    from .dlc_sample_launcher import _split_plan

    plan = _split_plan(rows, vocab, 0, device)
    per_split = plan.per_split * CHUNK
    return -(-vocab // per_split), per_split, plan.tile * CHUNK, plan.num_warps


def read_both(policy: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """(B, splits) float32: each split's sum of both rows' logits, read once with the sampler's launch shape."""
    rows, vocab = policy.shape
    splits, per_split, block, warps = read_plan(rows, vocab, policy.device)
    out = torch.empty(rows, splits, dtype=torch.float32, device=policy.device)
    read_both_kernel[(rows, splits)](policy, memory, out, policy.stride(0), memory.stride(0), vocab, per_split,
                                     splits, BLOCK=block, num_warps=warps)
    return out


def read_both_reference(policy: torch.Tensor, memory: torch.Tensor, per_split: int) -> torch.Tensor:
    """The same per-split sums in PyTorch (float32)."""
    total = policy.float() + memory.float()
    return torch.stack([part.sum(dim=1) for part in total.split(per_split, dim=1)], dim=1)
