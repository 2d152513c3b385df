"""Update stage, memory model: next-token cross-entropy on the step's rollouts (the memory update of DLC), and the
same step for the warm start.

The memory model learns the empirical rollout distribution, so pi_cal = softmax(z_policy - lam * z_memory)
down-weights modes the policy samples often (docs/ALGORITHMS.md, "DLC").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from megatron_rlvr.rollout.types import RolloutBatch
from megatron_rlvr.update.losses import count_loss_units
from megatron_rlvr.update.micro_batching import rank_micro_batches
from megatron_rlvr.update.packing import lengths_from_mask

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import AlgorithmConfig


def cross_entropy_step(model, tokens: torch.Tensor, mask: torch.Tensor, micro_batch_size: int,
                       algo: Optional[AlgorithmConfig] = None, max_tokens: Optional[int] = None) -> tuple[float, float]:
    """One optimizer step of next-token cross-entropy on the `mask`ed tokens (mean over all of them); used by the
    memory update and by the warm start. With `algo`, its packing and token budget apply (rows count up to their
    last masked token); `max_tokens` overrides that budget. Returns (loss, grad_norm)."""
    n_tok, _ = count_loss_units(mask)

    def loss_fn(logprobs, entropy, mb):
        m = mb["mask"]
        nll = -torch.where(m, logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32)).sum()
        return nll / max(n_tok, 1), {"nll_sum": nll.detach()}

    rows = torch.arange(tokens.shape[0])
    pack = bool(algo and algo.pack_sequences)
    if max_tokens is None:
        max_tokens = algo.max_tokens_per_micro_batch if algo else 0
    mbs = rank_micro_batches(model, rows, lengths_from_mask(mask), dict(tokens=tokens, mask=mask), micro_batch_size,
                             max_tokens, pack)
    stats = model.train_step(mbs, loss_fn, temperature=1.0, with_entropy=False)
    return float(stats["loss"]), float(stats.get("grad_norm", 0.0))


def update_memory(memory, batch: RolloutBatch, algo: AlgorithmConfig) -> dict[str, float]:
    """Cross-entropy on the response tokens (prompt as context): the memory model learns the empirical rollout
    distribution, so pi_cal = softmax(z_policy - lam * z_memory) down-weights modes sampled often. Micro-batches:
    ``algo.memory_max_tokens_per_micro_batch`` tokens when set, else the policy update's (the mean over all
    tokens is the same either way; only float rounding differs)."""
    budget = algo.memory_max_tokens_per_micro_batch or algo.max_tokens_per_micro_batch
    loss, grad_norm = cross_entropy_step(memory, batch.tokens, batch.response_mask, algo.micro_batch_size,
                                         algo=algo, max_tokens=budget)
    return {"memory/loss": loss, "memory/grad_norm": grad_norm}
