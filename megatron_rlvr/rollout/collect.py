"""Rollout stage: one round of G responses per prompt from pi_cal on every engine, gathered on every rank.

Every rank draws the same prompts (its prompt sampler is a copy of every other rank's: same seed, same state),
so no prompt crosses the wire. Each engine host (`rollout.layout`) generates and scores its contiguous shard of
the step's groups; the responses then travel as fixed-shape tensors (tokens, log-probs, lengths, rewards) in one
all-gather over the trainer's world group, and every rank packs the same `RolloutBatch` and takes its
data-parallel share of it. A request's RNG stream is that of its global index in the round, so the batch is the
same whatever the number of engines.

Scoring happens on the engine host, before the gather (the verifier's worker processes run beside the engine),
so a round takes the reward stage's scorer as an argument (`megatron_rlvr.reward.collect` passes it); this module
knows nothing of rewards beyond carrying them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.distributed as dist

from megatron_rlvr.rollout.engine import EngineDied, RolloutEngine, RolloutEngineError, any_rank_failed
from megatron_rlvr.rollout.layout import RolloutLayout
from megatron_rlvr.rollout.types import Generation, SamplingParams

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import RunConfig

# (examples, response token ids) -> one (reward, mode) per response, in order
Scorer = Callable[[list, list], list]


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


def rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def generate_round(engine: Optional[RolloutEngine], layout: RolloutLayout, task, examples: list, cfg: RunConfig,
                   seed: int, first_group: int, score: Scorer):
    """Generate one round on every engine and `score` it on the engine hosts; returns the round's gens, rewards,
    modes, group ids and the engine index of each sequence, in global order, identical on every rank."""
    G = cfg.rollout.group_size
    rank, world = rank_world()
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
            scored = score([e for e in exs for _ in range(G)], [g.response_ids for g in gens])
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
    rank, world = rank_world()
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
