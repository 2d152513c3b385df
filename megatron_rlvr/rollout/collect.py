"""Rollout and reward stages: G responses per prompt from pi_cal, verifier rewards, DAPO shaping and filtering.

Every rank draws the same prompts (its prompt sampler is a copy of every other rank's: same seed, same state),
so no prompt crosses the wire. Each engine host (`rollout.layout`) generates and scores its contiguous shard of
the step's groups; the responses then travel as fixed-shape tensors (tokens, log-probs, lengths, rewards) in one
all-gather over the trainer's world group, and every rank packs the same `RolloutBatch` and takes its
data-parallel share of it. A request's RNG stream is that of its global index in the round, so the batch is the
same whatever the number of engines.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megatron_rlvr.algorithms import dynamic_sampling_keep, overlong_penalty
from megatron_rlvr.config import RunConfig
from megatron_rlvr.rollout.engine import EngineDied, RolloutEngine, RolloutEngineError, any_rank_failed
from megatron_rlvr.rollout.layout import RolloutLayout
from megatron_rlvr.rollout.types import Generation, RolloutBatch, SamplingParams, pack_generations


def sampling_params(cfg: RunConfig, task, seed: int) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
        lam=cfg.dlc.lam if cfg.dlc.enabled else 0.0, tau=cfg.dlc.plausibility_tau if cfg.dlc.enabled else None,
        seed=seed, stop_token_ids=(task.tokenizer.eos_id,),
    )


def step_seed(cfg: RunConfig, step: int, round_: int) -> int:
    """Rollout RNG seed of (step, round): a pure function of the config, so a resumed run redraws identically."""
    return (cfg.seed * 1_000_003 + step * 1009 + round_) % (2**31 - 1)


def score(task, example, response_ids) -> tuple[float, int]:
    """Verifier reward and mode of one response (`Task.score_many` scores a batch; ids beyond the tokenizer, as in a
    model's padded vocabulary, are simply incorrect)."""
    return task.score_many([example], [response_ids])[0]


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _score_round(engine: Optional[RolloutEngine], layout: RolloutLayout, task, examples: list, cfg: RunConfig,
                 seed: int, first_group: int):
    """Generate and score one round on every engine; returns the round's gens, rewards, modes, group ids and the
    engine index of each sequence, in global order, identical on every rank."""
    G = cfg.rollout.group_size
    rank, world = _rank_world()
    shards = [layout.shard(len(examples), k) for k in range(layout.num_engines)]
    mine = layout.engine_index(rank)
    gens: list[Generation] = []
    scored: list[tuple[float, int]] = []
    failure: Optional[RolloutEngineError] = None
    if mine is not None and len(shards[mine]):
        exs = [examples[i] for i in shards[mine]]
        sp = sampling_params(cfg, task, seed)
        sp.seed_offset = shards[mine].start * G  # the global index of this shard's first request
        try:
            gens = engine.generate([ex.prompt_ids for ex in exs for _ in range(G)], sp)
        except RolloutEngineError as e:  # every rank must leave together, not hang in the all-gather below
            failure = e
        if failure is None:
            # one batch: the verifier's worker processes score the responses in parallel, each under its timeout
            scored = task.score_many([e for e in exs for _ in range(G)], [g.response_ids for g in gens])
    if any_rank_failed(failure is not None):
        raise EngineDied(failure is not None, failure)
    if world > 1:
        gens, scored = _all_gather_round(gens, scored, examples, shards, layout, G, cfg.rollout.max_new_tokens)
    rewards = torch.tensor([s[0] for s in scored], dtype=torch.float32)
    modes = [int(s[1]) for s in scored]
    groups = [first_group + i // G for i in range(len(gens))]
    engines = [k for k, sh in enumerate(shards) for _ in range(len(sh) * G)]
    return gens, rewards, modes, groups, engines


def _all_gather_round(gens, scored, examples, shards, layout: RolloutLayout, G: int, R: int):
    """Every host's sequences to every rank, as two fixed-shape tensors per rank (no pickled Python objects):
    int64 (n, R + 3) = response tokens | length | stopped | mode, float32 (n, 2R + 1) = log pi_cal | log pi_theta
    | reward. Prompts are not sent: every rank holds the round's examples already."""
    rank, world = _rank_world()
    n_max = max(len(sh) for sh in shards) * G
    ints = torch.zeros((n_max, R + 3), dtype=torch.long)
    floats = torch.zeros((n_max, 2 * R + 1), dtype=torch.float32)
    for i, (g, (reward, mode)) in enumerate(zip(gens, scored)):
        n = len(g.response_ids)
        ints[i, :n] = torch.tensor(g.response_ids, dtype=torch.long)
        ints[i, R:] = torch.tensor([n, int(g.finish_reason == "stop"), mode])
        floats[i, :n] = torch.tensor(g.logprob_cal, dtype=torch.float32)
        floats[i, R:R + n] = torch.tensor(g.logprob_policy, dtype=torch.float32)
        floats[i, 2 * R] = reward
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    out_ints = [torch.empty_like(ints, device=device) for _ in range(world)]
    out_floats = [torch.empty_like(floats, device=device) for _ in range(world)]
    dist.all_gather(out_ints, ints.to(device) if device else ints)
    dist.all_gather(out_floats, floats.to(device) if device else floats)
    all_gens: list[Generation] = []
    all_scored: list[tuple[float, int]] = []
    for k, host in enumerate(layout.hosts):
        ints_k, floats_k = out_ints[host].cpu(), out_floats[host].cpu()
        for j in range(len(shards[k]) * G):
            ex = examples[shards[k][j // G]]
            n, stopped, mode = ints_k[j, R:].tolist()
            all_gens.append(Generation(
                prompt_ids=list(ex.prompt_ids), response_ids=ints_k[j, :n].tolist(),
                logprob_cal=floats_k[j, :n].tolist(), logprob_policy=floats_k[j, R:R + n].tolist(),
                finish_reason="stop" if stopped else "length"))
            all_scored.append((float(floats_k[j, 2 * R]), int(mode)))
    return all_gens, all_scored


def collect_rollouts(engine: Optional[RolloutEngine], sampler, task, cfg: RunConfig, step: int,
                     layout: Optional[RolloutLayout] = None) -> RolloutBatch:
    """Generate and score one step's rollouts on every engine (see the module docstring); the same batch on every
    rank. `engine` is this rank's engine (None where it hosts none); `layout` defaults to one engine on rank 0."""
    layout = layout or RolloutLayout(_rank_world()[1], tp=_rank_world()[1])
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
        gens, correct, modes, groups, engines = _score_round(engine, layout, task, examples, cfg,
                                                             step_seed(cfg, step, rounds), n_groups)
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

