"""Reward stage: the step's scored rollouts: verifier rewards, DAPO overlong shaping and dynamic sampling.

`collect_rollouts` draws rounds of prompts (`rollout.collect.generate_round`, G responses each, scored by the task's
verifier on the engine hosts) until the batch holds `rollout.prompts_per_step` groups: with
`algorithm.dynamic_sampling`, groups whose rewards are all equal carry no signal and are replaced by fresh prompts
(DAPO; at most `algorithm.dynamic_sampling_max_rounds` extra rounds). The result is the same `RolloutBatch` on
every rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from megatron_rlvr.reward.dapo import dynamic_sampling_keep, overlong_penalty
from megatron_rlvr.rollout.collect import generate_round, rank_world, step_seed
from megatron_rlvr.rollout.engine import RolloutEngine
from megatron_rlvr.rollout.layout import RolloutLayout
from megatron_rlvr.rollout.types import RolloutBatch, pack_generations

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import RunConfig


def collect_rollouts(engine: Optional[RolloutEngine], sampler, task, cfg: RunConfig, step: int,
                     layout: Optional[RolloutLayout] = None) -> RolloutBatch:
    """Generate and score one step's rollouts on every engine (see the module docstring); the same batch on every
    rank. `engine` is this rank's engine (None where it hosts none); `layout` defaults to one engine on rank 0."""
    layout = layout or RolloutLayout(rank_world()[1], tp=rank_world()[1])
    return _collect(engine, layout, sampler, task, cfg, step)


def _collect(engine, layout: RolloutLayout, sampler, task, cfg: RunConfig, step: int) -> RolloutBatch:
    a, r = cfg.algorithm, cfg.rollout
    want = r.prompts_per_step
    kept: list[tuple] = []  # (gens, rewards, modes, groups) of informative groups
    dropped: list[tuple] = []
    n_groups, rounds, n_generated = 0, 0, 0
    engine_tokens = [0] * layout.num_engines
    while True:
        need = want - sum(len(k[0]) for k in kept) // r.group_size
        examples = sampler.next_batch(need)
        gens, correct, modes, groups, engines = generate_round(engine, layout, task, examples, cfg,
                                                               step_seed(cfg, step, rounds), n_groups,
                                                               task.score_many)
        for g, k in zip(gens, engines):
            engine_tokens[k] += len(g.response_ids)
        n_groups += len(examples)
        n_generated += len(gens)
        rewards = correct.clone()
        if a.overlong_shaping:
            lens = torch.tensor([len(g.response_ids) for g in gens])
            rewards = rewards + overlong_penalty(lens, r.max_new_tokens, a.overlong_cache_len, a.overlong_penalty)
        keep = dynamic_sampling_keep(rewards, torch.tensor(groups)) if a.dynamic_sampling else torch.ones(
            len(gens), dtype=torch.bool)
        for G0 in range(0, len(gens), r.group_size):
            part = slice(G0, G0 + r.group_size)
            rec = (gens[part], rewards[part], correct[part], modes[part], groups[part])
            (kept if bool(keep[G0]) else dropped).append(rec)
        rounds += 1
        have = len(kept)
        if have >= want or not a.dynamic_sampling or rounds > a.dynamic_sampling_max_rounds:
            break
    # DAPO oversamples until the batch is full; when the round budget runs out, uninformative groups fill the rest:
    # their advantages are zero under every group estimator, so they keep shapes fixed without adding signal.
    groups_used = (kept + dropped)[:want]
    gens = [g for rec in groups_used for g in rec[0]]
    batch = pack_generations(
        gens, rewards=torch.cat([rec[1] for rec in groups_used]).tolist(),
        group_ids=[gid for rec in groups_used for gid in rec[4]], pad_id=task.tokenizer.pad_id,
        modes=[m for rec in groups_used for m in rec[3]],
    )
    batch.correct = torch.cat([rec[2] for rec in groups_used]) > 0.5
    batch.stats = {
        "rollout/generated_sequences": float(n_generated),
        "dapo/kept_group_frac": len(kept) / max(len(kept) + len(dropped), 1),
        "dapo/rounds": float(rounds),
        "rollout/engines": float(layout.num_engines),
        # tokens each engine generated this step (every round): the load balance across engines
        **{f"rollout/engine_tokens/{k}": float(n) for k, n in enumerate(engine_tokens)},
    }
    return batch

