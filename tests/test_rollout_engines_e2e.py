"""`megatron-rlvr train` on 2 gloo ranks: one embedded engine per rank, each generating its shard of the step.

Both engines receive both models from the trainer (each rank's own copy of the gathered weight stream), so the
step-0 rollouts equal the one-engine run's, the trainer agrees with every engine on pi_old, and a run stopped
and resumed from its checkpoint matches the uninterrupted run exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.dist import REPO_ROOT, run_script

SMALL = [
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "algorithm.micro_batch_size=8",
    "warm_start.steps=40", "warm_start.batch_size=32", "warm_start.gate=false", "logging.progress=false",
    "logging.tensorboard=false",
    "eval.interval=0", "checkpoint.export_hf=false", "logging.plots=false",
]
CLI = REPO_ROOT / "megatron_rlvr" / "cli.py"


def _train(run_dir: Path, cache: Path, world: int, *overrides: str) -> list[dict]:
    run_script(CLI, world, ["train", f"run_dir={run_dir}", f"warm_start.cache_dir={cache}", *SMALL, *overrides],
               timeout=900)
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("warm_start_cache")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, cache) -> list[dict]:
    """4 uninterrupted steps on 2 ranks, checkpointing every 2."""
    return _train(tmp_path_factory.mktemp("two") / "run", cache, 2, "steps=4", "checkpoint.save_interval=2")


def test_two_engines_generate_the_one_engine_step_0_and_agree_with_the_trainer(two_ranks, cache, tmp_path):
    one = _train(tmp_path / "one", cache, 1, "steps=1")
    first = two_ranks[0]
    assert first["rollout/engines"] == 2 and one[0]["rollout/engines"] == 1
    assert first["rollout/engine_tokens/0"] > 0 and first["rollout/engine_tokens/1"] > 0
    assert first["rollout/engine_tokens/0"] + first["rollout/engine_tokens/1"] == one[0]["rollout/tokens"]
    for key in ("reward/mean", "rollout/tokens", "acc/avg_at_g", "response/length_mean"):
        assert first[key] == one[0][key], key  # same weights, same seeds: same sequences
    # their log-probs to float32 rounding (each engine batches and pads its shard differently)
    assert first["dlc/kl_cal_policy"] == pytest.approx(one[0]["dlc/kl_cal_policy"], abs=1e-6)
    assert first["rollout/logprob_abs_diff"] < 1e-5 and first["policy/ppo_kl_before_update"] < 1e-6


def test_a_two_engine_run_resumed_from_its_checkpoint_matches_the_uninterrupted_run(two_ranks, cache, tmp_path):
    run_dir = tmp_path / "run"
    _train(run_dir, cache, 2, "steps=2", "checkpoint.save_interval=2")
    got = _train(run_dir, cache, 2, "steps=4", "checkpoint.save_interval=2")  # checkpoint.load=auto resumes
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    for g, w in zip(got, two_ranks):
        for key in ("reward/mean", "policy/loss", "memory/loss", "policy/entropy", "rollout/tokens"):
            assert g[key] == w[key], (g["step"], key)
