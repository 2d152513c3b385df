"""Update stage: per-token log-probs and entropies from vocab-parallel logits, chunked over tokens.

The policy's log-prob recompute, its PPO loss and the memory model's cross-entropy all need, for every position,
``log softmax(z / T)[target]`` and (optionally) the entropy of ``softmax(z / T)``, where z are the (tokens, V / tp)
logits of this tensor-parallel rank. Materialising ``z.float()`` for the whole micro-batch costs 4 * tokens * V / tp
bytes (10 GB at 16k tokens and V = 151936) plus the same again for the saved softmax. :class:`_ChunkedTokenStats`
never holds more than one chunk of (chunk_tokens, V / tp) float32:

* forward: one pass over the logits takes, per chunk, the row maxima, the target logit, sum(exp) and, for the
  entropy, sum(exp * z), relative to this shard's maxima; under TP one MAX all-reduce of the maxima and one SUM
  all-reduce of the rescaled sums (all rows at once) combine the shards. Only (tokens,) statistics are saved, plus
  the input logits themselves (in their own dtype: bf16 on GPU; autograd holds the output layer's result anyway).
* backward: recomputes each chunk's softmax from the saved row statistics and writes that chunk of the gradient
  into one (tokens, V / tp) tensor of the logits' dtype. The gradient of a shard depends only on the shard and the
  global row statistics, so the backward needs no communication.

The arithmetic per row is Megatron-Core's ``vocab_parallel_cross_entropy`` (max, shift, exp, sum, log; softmax =
exp / sum; grad = (softmax - onehot) * grad) in the same order, so for float32 logits without tensor parallelism the
values and gradients are bitwise those of the unchunked Megatron path (with TP: equal up to float32 rounding). Megatron's fused cross-entropy (``megatron.core.fusions``) keeps the
whole float32 softmax for the backward and has no entropy, so it does not fit here.

Entropy: H = lse(z) - E_p[z] and dH/dz_j = p_j (E_p[z] - z_j).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

# Elements of one float32 chunk (chunk_tokens * V / tp): 2^26 floats = 256 MiB, i.e. 441 tokens at V = 151936.
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def chunk_tokens_for(vocab_shard: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that one (chunk, vocab_shard) float32 block holds about `chunk_elements` values."""
    return max(1, chunk_elements // max(1, vocab_shard))


def _vocab_start(vocab_shard: int, group: Optional[dist.ProcessGroup]) -> int:
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group) * vocab_shard


def _all_reduce(t: torch.Tensor, op, group: Optional[dist.ProcessGroup]) -> None:
    if group is not None and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)


def _scaled_chunk(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """A fresh float32 copy of `logits` / T (safe to modify in place)."""
    return logits.to(torch.float32, copy=True).div_(temperature)


def _shifted(logits: torch.Tensor, temperature: float, shift: torch.Tensor) -> torch.Tensor:
    """Fresh float32 z / T - shift[:, None]. At T = 1 one pass: bf16 - float32 promotes to float32 exactly, the
    same values as casting first and subtracting after."""
    if temperature == 1.0:
        return torch.sub(logits, shift.unsqueeze(-1))
    return _scaled_chunk(logits, temperature).sub_(shift.unsqueeze(-1))


def _shard_targets(target: torch.Tensor, vocab_shard: int, group: Optional[dist.ProcessGroup]):
    """(shard-local target ids, 0 off the shard; whether the target is on this shard)."""
    local = target - _vocab_start(vocab_shard, group)
    in_shard = (local >= 0) & (local < vocab_shard)
    return torch.where(in_shard, local, torch.zeros_like(local)), in_shard


def _combine_shards(row_max: torch.Tensor, sums: torch.Tensor, in_shard: torch.Tensor, with_entropy: bool,
                    group: Optional[dist.ProcessGroup]):
    """(log-prob, entropy or None, global sum_exp, mean_z or None) per row from one shard's statistics relative to its
    own row maxima: under TP one MAX all-reduce of the maxima and one SUM all-reduce of the rescaled sums (a no-op
    without tensor parallelism, so TP=1 keeps Megatron's exact arithmetic). Updates `row_max` to the global max."""
    if group is not None and dist.is_initialized() and dist.get_world_size(group) > 1:
        local_max = row_max.clone()
        _all_reduce(row_max, dist.ReduceOp.MAX, group)
        shift = local_max - row_max  # <= 0
        sums[0] += torch.where(in_shard, shift, torch.zeros_like(shift))
        sums[1:] *= torch.exp(shift)
        _all_reduce(sums, dist.ReduceOp.SUM, group)
    sum_exp = sums[1]
    logprob = -(torch.log(sum_exp) - sums[0])
    entropy = mean_z = None
    if with_entropy:
        mean_z = sums[2] / sum_exp
        entropy = row_max + torch.log(sum_exp) - mean_z
    return logprob, entropy, sum_exp, mean_z


def _incoming_grads(grad_lp: Optional[torch.Tensor], grad_ent: Optional[torch.Tensor], like: torch.Tensor):
    """The backward's (grad_lp, grad_ent or None): an unused log-prob gets zeros, an entropy that was not asked for
    (the empty placeholder output) or not used gets None."""
    if grad_ent is not None and grad_ent.numel() == 0:
        grad_ent = None
    return (torch.zeros_like(like) if grad_lp is None else grad_lp), grad_ent


class _ChunkedTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, temperature, with_entropy, group, chunk):
        # logits (n, Vs) any float dtype; target (n,) int64 global vocab ids. One pass over the logits: each chunk's
        # statistics are taken relative to this shard's row maxima, then rescaled to the global maxima (a no-op
        # without tensor parallelism, so TP=1 keeps Megatron's exact arithmetic).
        n, vs = logits.shape
        local, in_shard = _shard_targets(target, vs, group)
        row_max = torch.empty(n, dtype=torch.float32, device=logits.device)
        k = 3 if with_entropy else 2
        sums = torch.empty(k, n, dtype=torch.float32, device=logits.device)  # predicted, sum_exp[, sum_exp_z]
        for s in range(0, n, chunk):
            e = slice(s, s + chunk)
            if temperature == 1.0:
                z = logits[e]  # (c, Vs) in its own dtype: the max is exact, float32 arithmetic starts below
                m = torch.max(z, dim=-1)[0].float()
                zs = torch.sub(z, m.unsqueeze(-1))
            else:
                z = _scaled_chunk(logits[e], temperature)  # (c, Vs)
                m = torch.max(z, dim=-1)[0]
                zs = z - m.unsqueeze(-1) if with_entropy else z.sub_(m.unsqueeze(-1))
            row_max[e] = m
            rows = torch.arange(zs.shape[0], device=zs.device)
            sums[0, e] = torch.where(in_shard[e], zs[rows, local[e]], torch.zeros((), device=zs.device))
            torch.exp(zs, out=zs)
            sums[1, e] = zs.sum(dim=-1)
            if with_entropy:
                sums[2, e] = (zs * z).sum(dim=-1)
        logprob, entropy, sum_exp, mean_z = _combine_shards(row_max, sums, in_shard, with_entropy, group)
        ctx.save_for_backward(logits, local, in_shard, row_max, sum_exp, mean_z)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)
        if entropy is None:
            return logprob, logprob.new_zeros(0)
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_lp, grad_ent):
        logits, local, in_shard, row_max, sum_exp, mean_z = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        grad_lp, grad_ent = _incoming_grads(grad_lp, grad_ent, row_max)
        grad = torch.empty_like(logits)
        n = logits.shape[0]
        for s in range(0, n, chunk):
            e = slice(s, s + chunk)
            # softmax as Megatron's cross-entropy computes it: exp(z - max) / sum
            p = _shifted(logits[e], T, row_max[e]).exp_().div_(sum_exp[e].unsqueeze(-1))
            rows = torch.arange(p.shape[0], device=p.device)
            if grad_ent is None:
                g = p
                g[rows, local[e]] -= in_shard[e].float()  # d nll / dz = p - onehot
                g.mul_(-grad_lp[e].unsqueeze(-1))
            else:
                # d/dz [g_lp * logprob + g_ent * H] = g_lp (onehot - p) + g_ent p (E_p[z] - z)
                g = _shifted(logits[e], T, mean_z[e]).neg_().mul_(grad_ent[e].unsqueeze(-1))
                g.sub_(grad_lp[e].unsqueeze(-1)).mul_(p)
                del p
                g[rows, local[e]] += torch.where(in_shard[e], grad_lp[e], torch.zeros_like(grad_lp[e]))
            if T != 1.0:
                g.div_(T)
            grad[e].copy_(g)
        return grad, None, None, None, None, None


class _FusedTokenStats(torch.autograd.Function):
    """The same statistics and gradient from the Triton kernels (``kernels/token_stats_kernel.py``): one read of
    the logits forward, one read and one write of the gradient backward, nothing of size (tokens, V) in float32."""

    @staticmethod
    def forward(ctx, logits, target, temperature, with_entropy, group):
        from megatron_rlvr.kernels.token_stats_kernel import token_stats_forward

        local, in_shard = _shard_targets(target, logits.shape[1], group)
        row_max, sums = token_stats_forward(logits, local, in_shard, temperature, with_entropy)
        logprob, entropy, sum_exp, mean_z = _combine_shards(row_max, sums, in_shard, with_entropy, group)
        ctx.save_for_backward(logits, local, in_shard, row_max, sum_exp, mean_z)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return logprob, (entropy if entropy is not None else logprob.new_zeros(0))

    @staticmethod
    def backward(ctx, grad_lp, grad_ent):
        from megatron_rlvr.kernels.token_stats_kernel import token_stats_backward

        logits, local, in_shard, row_max, sum_exp, mean_z = ctx.saved_tensors
        grad_lp, grad_ent = _incoming_grads(grad_lp, grad_ent, row_max)
        grad = token_stats_backward(logits, local, in_shard, row_max, sum_exp, mean_z, grad_lp,
                                    grad_ent if mean_z is not None else None, ctx.temperature)
        return grad, None, None, None, None


IMPLS = ("torch", "triton")


def token_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    group: Optional[dist.ProcessGroup] = None,
    chunk_tokens: Optional[int] = None,
    impl: str = "torch",
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log softmax(logits / T)[target] and the entropy of softmax(logits / T), per row, vocab-parallel over `group`.

    logits: (..., V / tp) of this TP rank (rank r holds vocab ids [r * V/tp, (r + 1) * V/tp)), any float dtype;
    target: (...) int64 global vocab ids. Returns float32 (...) tensors (entropy None unless `with_entropy`).
    Differentiable w.r.t. `logits`; at most `chunk_tokens` rows of float32 logits are live at a time (default:
    :func:`chunk_tokens_for` the shard). `group` None means no tensor parallelism. `impl`: "torch" (chunked
    PyTorch, bitwise Megatron's arithmetic at TP = 1 in float32) or "triton" (the fused kernels: equal up to float32
    rounding, on CUDA tensors or under TRITON_INTERPRET=1).
    """
    if impl not in IMPLS:
        raise ValueError(f"token_stats impl must be one of {IMPLS}, got {impl!r}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target shape {tuple(target.shape)} must be logits shape {tuple(logits.shape)} minus the "
                         "vocab dim")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = target.shape
    flat = logits.reshape(-1, logits.shape[-1])  # a view for the contiguous logits GPTModel returns
    if impl == "triton":
        lp, ent = _FusedTokenStats.apply(flat, target.reshape(-1), float(temperature), with_entropy, group)
    else:
        chunk = chunk_tokens or chunk_tokens_for(flat.shape[-1])
        lp, ent = _ChunkedTokenStats.apply(flat, target.reshape(-1), float(temperature), with_entropy, group, chunk)
    return lp.view(lead), ent.view(lead) if with_entropy else None


def reference_token_stats(
    logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchunked reference of :func:`token_stats` on full-vocabulary logits, computed in `dtype` (float32, or
    float64 where float32 summation over V = 151936 would itself be off by ~1e-4), returned as float32."""
    logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp.float(), ent.float()
