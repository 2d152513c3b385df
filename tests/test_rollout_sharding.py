"""Sharding never changes the result: 1, 2 or 4 embedded engines (one per gloo rank) produce the same step.

Every rank hosts an embedded engine with the same weights; `collect_rollouts` gives each its contiguous shard of
the step's prompt groups and assembles the batch with tensor all-gathers. Per-sequence seeds with the decode
position as the RNG offset make every sequence independent of the engine, batch and padding it ran in.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.dist import run_distributed

OVERRIDES = ["rollout.prompts_per_step=7", "rollout.group_size=3", "rollout.max_new_tokens=6", "dlc.lam=0.5",
             "rollout.batch_size=5"]  # 7 groups over 2 or 4 engines: uneven shards; batch 5 splits groups in chunks


def _collect_on_every_rank(overrides: list[str], steps: int) -> dict:
    import torch.distributed as dist

    from megatron_rlvr.config import load_config
    from megatron_rlvr.qwen3.shapes import get_preset
    from megatron_rlvr.reward.collect import collect_rollouts
    from megatron_rlvr.rollout.embedded import EmbeddedEngine
    from megatron_rlvr.rollout.layout import RolloutLayout
    from megatron_rlvr.tasks import build_task
    from megatron_rlvr.tasks.base import PromptSampler

    dist.init_process_group("gloo")
    cfg = load_config(overrides=overrides)
    task = build_task(cfg.task)
    sampler = PromptSampler(task, cfg.seed)
    engine = EmbeddedEngine(get_preset(cfg.policy.preset), get_preset(cfg.memory.preset),
                            batch_size=cfg.rollout.batch_size, init_seed=3)
    layout = RolloutLayout(dist.get_world_size(), tp=1)
    out = []
    for step in range(steps):
        b = collect_rollouts(engine, sampler, task, cfg, step, layout)
        out.append({k: getattr(b, k) for k in ("tokens", "response_lens", "logprob_cal", "logprob_rollout_policy",
                                               "rewards", "group_ids", "modes")}
                   | {"finish": b.finish_reasons, "stats": b.stats})
    dist.destroy_process_group()
    return {"steps": out, "sampler": sampler.state_dict()}


@pytest.fixture(scope="module")
def single():
    return run_distributed(_collect_on_every_rank, world_size=1, args=(OVERRIDES, 2), timeout=300)[0]


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_the_one_engine_batch_whatever_the_number_of_engines(single, world):
    results = run_distributed(_collect_on_every_rank, world_size=world, args=(OVERRIDES, 2), timeout=600)
    for rank, res in enumerate(results):
        assert res["sampler"] == single["sampler"], rank  # every rank's data position stays that of one engine
        for got, want in zip(res["steps"], single["steps"]):
            assert torch.equal(got["tokens"], want["tokens"]), rank
            assert torch.equal(got["response_lens"], want["response_lens"])
            assert got["finish"] == want["finish"]
            assert torch.equal(got["rewards"], want["rewards"]) and torch.equal(got["modes"], want["modes"])
            assert torch.equal(got["group_ids"], want["group_ids"])
            # float32 rounding: each engine pads and batches differently
            torch.testing.assert_close(got["logprob_cal"], want["logprob_cal"], atol=1e-5, rtol=0)
            torch.testing.assert_close(got["logprob_rollout_policy"], want["logprob_rollout_policy"], atol=1e-5,
                                       rtol=0)
            assert got["stats"]["rollout/engines"] == world
            # the tokens each engine generated add up to the step's, and every engine had work
            per_engine = [got["stats"][f"rollout/engine_tokens/{k}"] for k in range(world)]
            assert sum(per_engine) == float(want["response_lens"].sum()) and all(n > 0 for n in per_engine)
    assert single["steps"][0]["stats"]["rollout/engines"] == 1
