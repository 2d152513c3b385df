"""Update stage, policy: log-prob recompute and the PPO update, under Megatron-Core.

Loss normalisation is global: every micro-batch's loss is divided by the token (or sequence) count of the whole
mini-batch across all data-parallel ranks (`count_loss_units` on the full batch, which every rank holds), so
micro-batching and data parallelism never change the gradient (tested against the unsplit loss).
Micro-batches are planned by ``micro_batching`` (sequence count or token budget) and, with
``algorithm.pack_sequences``, packed into THD sequences by the model (``update.packing``).
The memory model's update is in ``update.memory``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from megatron_rlvr.rollout.types import RolloutBatch
from megatron_rlvr.update.losses import count_loss_units, policy_loss, tis_weights
from megatron_rlvr.update.micro_batching import plan_micro_batches, rank_micro_batches
from megatron_rlvr.update.offpolicy import offpolicy_weights

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import AlgorithmConfig


def sequence_lengths(batch: RolloutBatch) -> torch.Tensor:
    """(N,) real tokens of each row: prompt + response."""
    return batch.prompt_lens + batch.response_lens


def _mean_stats(all_stats: list[dict]) -> dict[str, float]:
    keys = {k for s in all_stats for k in s}
    return {k: sum(float(s[k]) for s in all_stats if k in s) / sum(1 for s in all_stats if k in s) for k in keys}


def recompute_logprobs(model, batch: RolloutBatch, temperature: float, micro_batch_size: int,
                       with_entropy: bool = False, algo: Optional[AlgorithmConfig] = None):
    """log pi(token | prefix) of every token under `model`'s current weights, (N, L), plus entropy (N, L).

    With `algo`, its ``pack_sequences`` and ``max_tokens_per_micro_batch`` apply (every rank computes all rows);
    then every row is 0 past its length."""
    pack = bool(algo and algo.pack_sequences)
    max_tokens = algo.max_tokens_per_micro_batch if algo else 0
    if not pack and max_tokens <= 0:
        return model.forward_logprobs(batch.tokens, temperature=temperature, micro_batch_size=micro_batch_size,
                                      with_entropy=with_entropy)
    lengths = sequence_lengths(batch)
    plan = plan_micro_batches(torch.arange(len(batch)), lengths, micro_batch_size, max_tokens, packed=pack)
    return model.forward_logprobs(batch.tokens, temperature=temperature, micro_batch_size=micro_batch_size,
                                  with_entropy=with_entropy, lengths=lengths, micro_batches=plan, pack=pack)


def update_policy(policy, batch: RolloutBatch, old_logprobs: torch.Tensor, a: AlgorithmConfig, *, temperature: float,
                  max_response_len: int, seed: int, step: int,
                  ref_logprobs: Optional[torch.Tensor] = None) -> dict[str, float]:
    """PPO epochs over mini-batches of the step's rollouts; one optimizer step per mini-batch.

    `a` is the run's algorithm section; the rest of the run config enters only as the sampling `temperature` (the
    log-probs are those of the distribution sampled), `max_response_len` (Dr.GRPO's constant normaliser) and the run
    `seed` (the mini-batch permutation)."""
    n = len(batch)
    mask = batch.response_mask
    # Off-policy weights: legacy `tis` (one product ratio) or the separated mismatch x shift corrections; the
    # stats of both ratios are logged every step either way.
    is_w, is_stats = offpolicy_weights(
        old_logprobs, batch.logprob_rollout_policy, batch.logprob_cal, mask, a.mismatch_correction, a.mismatch_cap,
        a.mismatch_mask_low, a.shift_correction, a.shift_cap, a.shift_mask_low)
    tis = tis_weights(old_logprobs, batch.logprob_cal, a.tis_cap) if a.tis else is_w
    adv_tok = batch.advantages
    fields = dict(tokens=batch.tokens, mask=mask, old=old_logprobs, adv=adv_tok, ref=ref_logprobs, tis=tis)
    lengths = sequence_lengths(batch)
    per_step, first = [], None
    mini = n // a.mini_batches
    for epoch in range(a.ppo_epochs):
        # A fixed-seed permutation per (step, epoch) keeps resumed runs identical to uninterrupted ones.
        gen = torch.Generator().manual_seed(seed * 7919 + step * 31 + epoch)
        order = torch.randperm(n, generator=gen) if (a.mini_batches > 1 or a.ppo_epochs > 1) else torch.arange(n)
        for k in range(a.mini_batches):
            rows = order[k * mini : (k + 1) * mini]
            n_tok, n_seq = count_loss_units(mask[rows])

            def loss_fn(logprobs, entropy, mb, n_tok=n_tok, n_seq=n_seq):
                return policy_loss(
                    logprobs, mb["old"], mb["adv"], mb["mask"], clip_eps_low=a.clip_eps_low,
                    clip_eps_high=a.clip_eps_high, loss_agg=a.loss_agg, ref_logprobs=mb.get("ref"),
                    kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, entropy=entropy, entropy_coef=a.entropy_coef,
                    tis_weights=mb.get("tis"), max_response_len=max_response_len,
                    global_token_count=n_tok, global_seq_count=n_seq, clip_ratio_c=a.clip_ratio_c,
                )

            mbs = rank_micro_batches(policy, rows, lengths, fields, a.micro_batch_size, a.max_tokens_per_micro_batch,
                                 a.pack_sequences)
            stats = policy.train_step(mbs, loss_fn, temperature=temperature,
                                      with_entropy=a.entropy_coef > 0)
            first = stats if first is None else first
            per_step.append(stats)
    out = {f"policy/{k}": v for k, v in _mean_stats(per_step).items()}
    # Before the first optimizer step the trained policy IS pi_old: its PPO KL must be ~0 (STYLE: parity checks).
    out["policy/ppo_kl_before_update"] = float(first.get("approx_kl", 0.0))
    out["policy/ppo_kl"] = out.pop("policy/approx_kl", 0.0)
    out["policy/clip_frac"] = out.pop("policy/pg_clipfrac", 0.0)
    # Per-micro-batch losses are globally normalised partial sums: only their total (`loss`) is meaningful.
    for k in ("policy/pg_loss", "policy/num_tokens"):
        out.pop(k, None)
    out.update(is_stats)
    return out
