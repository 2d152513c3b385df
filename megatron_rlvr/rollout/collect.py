"""Rollout and reward stages: G responses per prompt from pi_cal, verifier rewards, DAPO shaping and filtering.

Rollouts are generated on global rank 0 (where the engine lives) and broadcast, so every trainer rank packs the
same `RolloutBatch` and takes its data-parallel share of it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megatron_rlvr.algorithms import dynamic_sampling_keep, overlong_penalty
from megatron_rlvr.config import RunConfig
from megatron_rlvr.rollout.types import Generation, RolloutBatch, RolloutEngine, SamplingParams, pack_generations


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
    """Verifier reward and mode; a response holding ids beyond the tokenizer (a model's padded vocabulary, as
    Qwen3's 151936 rows vs its tokenizer's 151669 tokens) is simply incorrect."""
    vocab = getattr(task.tokenizer, "vocab_size", None)
    if vocab is not None and any(int(t) >= vocab for t in response_ids):
        return 0.0, -1
    return task.score(example, response_ids)


def _score_round(engine: RolloutEngine, task, examples: list, cfg: RunConfig, seed: int, first_group: int):
    G = cfg.rollout.group_size
    prompts = [ex.prompt_ids for ex in examples for _ in range(G)]
    gens: list[Generation] = engine.generate(prompts, sampling_params(cfg, task, seed))
    scored = [score(task, ex, g.response_ids) for ex, g in zip((e for e in examples for _ in range(G)), gens)]
    rewards = torch.tensor([s[0] for s in scored], dtype=torch.float32)
    modes = [int(s[1]) for s in scored]
    groups = [first_group + i // G for i in range(len(gens))]
    return gens, rewards, modes, groups


def collect_rollouts(engine: Optional[RolloutEngine], sampler, task, cfg: RunConfig, step: int) -> RolloutBatch:
    """Generate and score one step's rollouts (on rank 0) and broadcast them to every rank."""
    batch = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        batch = _collect_local(engine, sampler, task, cfg, step)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [batch, sampler.state_dict() if batch is not None else None]
        dist.broadcast_object_list(box, src=0)
        batch, sampler_state = box
        sampler.load_state_dict(sampler_state)  # every rank's data position stays identical (checkpoints)
    return batch


def _collect_local(engine: RolloutEngine, sampler, task, cfg: RunConfig, step: int) -> RolloutBatch:
    a, r = cfg.algorithm, cfg.rollout
    want = r.prompts_per_step
    kept: list[tuple] = []  # (gens, rewards, modes, groups) of informative groups
    dropped: list[tuple] = []
    n_groups, rounds, n_generated = 0, 0, 0
    while True:
        need = want - sum(len(k[0]) for k in kept) // r.group_size
        examples = sampler.next_batch(need)
        gens, correct, modes, groups = _score_round(engine, task, examples, cfg, step_seed(cfg, step, rounds), n_groups)
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
    }
    return batch


def evaluate(engine: Optional[RolloutEngine], task, cfg: RunConfig, step: int) -> dict[str, float]:
    """AVG@G, PASS@G and mode coverage of the policy alone (lambda = 0) on a fixed prompt set (rank 0 only)."""
    if engine is None:
        return {}
    from megatron_rlvr.metrics import coverage_metrics, rollout_metrics

    e = cfg.eval
    examples = task.prompts[: e.num_prompts]
    G = e.group_size
    sp = sampling_params(cfg, task, seed=(cfg.seed * 7 + 11) % (2**31 - 1))  # same draws every eval: less noise
    sp.lam, sp.tau, sp.temperature = 0.0, None, e.temperature
    gens = engine.generate([ex.prompt_ids for ex in examples for _ in range(G)], sp)
    scored = [score(task, ex, g.response_ids) for ex, g in zip((x for x in examples for _ in range(G)), gens)]
    batch = pack_generations(gens, [s[0] for s in scored], [i // G for i in range(len(gens))],
                             task.tokenizer.pad_id, modes=[int(s[1]) for s in scored])
    m = rollout_metrics(batch)
    keys = ("acc/avg_at_g", "acc/pass_at_g", "modes/distinct_correct_per_query", "response/length_mean")
    out = {f"eval/{k.split('/')[-1]}": m[k] for k in keys if k in m}
    out.update({f"eval/{k.split('/')[-1]}": v for k, v in coverage_metrics(batch).items()})  # PASS@k, answer entropy
    ent = [x for g in gens for x in (g.entropy_cal or [])]
    if ent:
        out["eval/entropy"] = sum(ent) / len(ent)
    return out
