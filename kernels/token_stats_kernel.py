"""Update stage: fused per-token log-prob / entropy statistics of vocab-parallel logits (Triton), with the
pure-PyTorch reference of the same per-row quantities beside it.

The policy's log-prob recompute, its PPO update and the memory model's cross-entropy all need, for each row of
(n, V / tp) logits x of this tensor-parallel rank and z = x / T (float32):

    m = max_j z_j,   s = sum_j exp(z_j - m),   q = sum_j exp(z_j - m) z_j,   t = z_target - m (0 off this shard)

from which ``megatron_rlvr.update.logprobs`` combines the shards (one MAX and one SUM all-reduce) and forms
log p(target) = t - log s and H = m + log s - q / s. ``token_stats_forward`` reads each row of logits once (bf16 in,
float32 accumulation, an online max rescaled once per block) and writes only those (n,) statistics. The chunked
PyTorch path does the same in about five float32 passes over a chunk.

The gradient of g_lp * log p(target) + g_ent * H with respect to z_j is, with p_j = exp(z_j - m) / s and the
global m, s and mean_z = q / s (the shard's gradient needs no communication):

    dz_j = p_j (g_ent (mean_z - z_j) - g_lp) + g_lp [j == target]

and dx = dz / T. ``token_stats_backward`` reads the logits once more and writes the gradient once, in the logits'
dtype; the PyTorch path recomputes the softmax chunk by chunk in float32 (about six passes).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _stats_fwd_kernel(x_ptr, stride_x, local_ptr, in_shard_ptr, max_ptr, sums_ptr, n_rows, n_cols, inv_t,
                      WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    lanes = tl.arange(0, BLOCK)
    # A running row max m (one cross-lane max per block) and per-lane sums relative to it: one exp per logit plus
    # one per block. A per-lane max would save the reduction but cost a second exp per logit, and exp issues at a
    # quarter of the rate of an FMA: at H200 bandwidth two per bf16 logit already reach the exp units' limit.
    s_vec = tl.zeros((BLOCK,), tl.float32)
    m = tl.max(s_vec, axis=0) + float("-inf")  # an fp32 scalar tensor: a loop-carried value keeps its type
    q_vec = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        mask = cols < n_cols
        z = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # exp(-inf - -inf) is NaN: while nothing finite was seen, keep scale 1 (the sums are still 0)
        scale = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
        e = tl.where(mask, tl.exp(z - m_new), 0.0)
        s_vec = s_vec * scale + e
        if WITH_ENTROPY:
            q_vec = q_vec * scale + tl.where(mask, e * z, 0.0)
        m = m_new
    s = tl.sum(s_vec, axis=0)
    target = tl.load(local_ptr + row)
    in_shard = tl.load(in_shard_ptr + row) != 0
    z_t = tl.load(x_row + target).to(tl.float32) * inv_t
    tl.store(max_ptr + row, m)
    tl.store(sums_ptr + row, tl.where(in_shard, z_t - m, 0.0))
    tl.store(sums_ptr + n_rows + row, s)
    if WITH_ENTROPY:
        q = tl.sum(q_vec, axis=0)
        tl.store(sums_ptr + 2 * n_rows + row, q)


@triton.jit
def _stats_bwd_kernel(x_ptr, stride_x, g_ptr, stride_g, local_ptr, in_shard_ptr, max_ptr, sum_exp_ptr,
                      mean_z_ptr, grad_lp_ptr, grad_ent_ptr, n_cols, inv_t,
                      WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    g_row = g_ptr + row.to(tl.int64) * stride_g
    m = tl.load(max_ptr + row)
    inv_s = 1.0 / tl.load(sum_exp_ptr + row)
    g_lp = tl.load(grad_lp_ptr + row)
    target = tl.load(local_ptr + row)
    hot = tl.where(tl.load(in_shard_ptr + row) != 0, g_lp, 0.0)
    if WITH_ENTROPY:
        g_ent = tl.load(grad_ent_ptr + row)
        mean_z = tl.load(mean_z_ptr + row)
    lanes = tl.arange(0, BLOCK)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        mask = cols < n_cols
        z = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
        p = tl.exp(z - m) * inv_s
        if WITH_ENTROPY:
            g = p * (g_ent * (mean_z - z) - g_lp)
        else:
            g = -p * g_lp
        g = (g + tl.where(cols == target, hot, 0.0)) * inv_t
        tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)


def _block(n_cols: int) -> tuple[int, int]:
    """(columns per loop iteration, warps): 2048 bf16 ids = 4 KiB per load on a GPU; small under the interpreter,
    which pays per operation."""
    cap = 256 if os.environ.get("TRITON_INTERPRET", "0") == "1" else 2048
    block = min(cap, triton.next_power_of_2(max(n_cols, 16)))
    return block, max(1, min(8, block // 256))


def _row_major(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def token_stats_forward(logits: torch.Tensor, local: torch.Tensor, in_shard: torch.Tensor, temperature: float,
                        with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_max (n,), sums (k, n)) float32 of this shard's (n, Vs) logits: sums = [z_t - m, sum exp(z - m)
    [, sum exp(z - m) z]] with z = logits / T, m the shard's row max and t the shard-local target `local` (rows
    with `in_shard` False get 0 there). k = 3 with the entropy, else 2. Same values as
    :func:`token_stats_forward_reference` up to float32 rounding."""
    x = _row_major(logits)
    n, vs = x.shape
    row_max = torch.empty(n, dtype=torch.float32, device=x.device)
    sums = torch.empty(3 if with_entropy else 2, n, dtype=torch.float32, device=x.device)
    if n:
        block, warps = _block(vs)
        _stats_fwd_kernel[(n,)](x, x.stride(0), local.contiguous(), in_shard.to(torch.int8).contiguous(), row_max,
                                sums, n, vs, 1.0 / temperature, WITH_ENTROPY=with_entropy, BLOCK=block,
                                num_warps=warps)
    return row_max, sums


def token_stats_backward(logits: torch.Tensor, local: torch.Tensor, in_shard: torch.Tensor, row_max: torch.Tensor,
                         sum_exp: torch.Tensor, mean_z: Optional[torch.Tensor], grad_lp: torch.Tensor,
                         grad_ent: Optional[torch.Tensor], temperature: float) -> torch.Tensor:
    """d(sum_rows g_lp * log p(target) + g_ent * H) / d logits, (n, Vs) in the logits' dtype, from the global
    row statistics (see the module docstring); `grad_ent` None: the log-prob term alone."""
    x = _row_major(logits)
    n, vs = x.shape
    grad = torch.empty_like(x)
    if n:
        block, warps = _block(vs)
        with_entropy = grad_ent is not None
        f32 = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
        _stats_bwd_kernel[(n,)](x, x.stride(0), grad, grad.stride(0), local.contiguous(),
                                in_shard.to(torch.int8).contiguous(), f32(row_max), f32(sum_exp),
                                f32(mean_z) if with_entropy else row_max, f32(grad_lp),
                                f32(grad_ent) if with_entropy else row_max, vs, 1.0 / temperature,
                                WITH_ENTROPY=with_entropy, BLOCK=block, num_warps=warps)
    return grad


def token_stats_forward_reference(logits: torch.Tensor, local: torch.Tensor, in_shard: torch.Tensor,
                                  temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 PyTorch reference of :func:`token_stats_forward` (dense, returned as float32)."""
    z = logits.double() / temperature
    m = z.max(dim=-1).values
    e = torch.exp(z - m[:, None])
    rows = torch.arange(z.shape[0], device=z.device)
    sums = [torch.where(in_shard, z[rows, local] - m, torch.zeros_like(m)), e.sum(-1)]
    if with_entropy:
        sums.append((e * z).sum(-1))
    return m.float(), torch.stack(sums).float()


def token_stats_backward_reference(logits: torch.Tensor, local: torch.Tensor, in_shard: torch.Tensor,
                                   row_max: torch.Tensor, sum_exp: torch.Tensor, mean_z: Optional[torch.Tensor],
                                   grad_lp: torch.Tensor, grad_ent: Optional[torch.Tensor],
                                   temperature: float) -> torch.Tensor:
    """float64 PyTorch reference of :func:`token_stats_backward` (dense, returned in the logits' dtype)."""
    z = logits.double() / temperature
    p = torch.exp(z - row_max.double()[:, None]) / sum_exp.double()[:, None]
    g = -p * grad_lp.double()[:, None]
    if grad_ent is not None:
        g = g + p * grad_ent.double()[:, None] * (mean_z.double()[:, None] - z)
    rows = torch.arange(z.shape[0], device=z.device)
    g[rows, local] += torch.where(in_shard, grad_lp.double(), torch.zeros_like(grad_lp.double()))
    return (g / temperature).to(logits.dtype)
