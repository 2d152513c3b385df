"""A short RLVR run with `rollout.engine=sglang`: the trainer starts an in-process SGLang engine holding the DLC
model, pushes both models' weights into it every step, and trains on what it generates; on two ranks, each rank
starts its own engine and generates its shard of the step, and step 0 is the one-engine run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


import pytest

ARGS = ["rollout.engine=sglang", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "warm_start.steps=40", "warm_start.gate=false", "logging.progress=false", "logging.tensorboard=false", "checkpoint.export_hf=false"]


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def one_engine(tmp_path_factory, warm_cache) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", *ARGS, "steps=2",
           f"warm_start.cache_dir={warm_cache}", "eval.interval=2", "eval.num_prompts=4", "eval.group_size=2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=dict(os.environ))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_runs_iac_dlc_steps_on_sglang_and_agrees_with_megatron(one_engine):
    rows = one_engine
    assert [r["step"] for r in rows] == [0, 1]
    # SGLang (float32 on CPU) and Megatron agree on the sampled tokens' policy log-probs: the weight push
    # through the converter's name map reached the engine intact.
    assert rows[0]["rollout/logprob_abs_diff"] < 1e-4
    assert rows[0]["policy/ppo_kl_before_update"] < 1e-6
    assert rows[0]["rollout/tokens"] > 0 and "eval/avg_at_g" in rows[1]
    assert rows[1]["sync/bytes"] > 0


def test_two_ranks_start_two_colocated_engines_whose_step_0_is_the_one_engine_step(one_engine, warm_cache, tmp_path):
    from tests.helpers.dist import _launch, _rank_env, free_port

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", *ARGS, "steps=1",
           f"warm_start.cache_dir={warm_cache}", "eval.interval=0"]
    port = free_port()
    envs = [_rank_env(r, 2, port, None) for r in range(2)]
    for env in envs:  # tests/ on the path would make `import sglang` find tests/sglang
        env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep)
                                            if Path(p).resolve() != ROOT / "tests")
    _launch([cmd, cmd], envs, timeout=1200, cwd=ROOT)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["rollout/engines"] == 2
    assert row["rollout/engine_tokens/0"] > 0 and row["rollout/engine_tokens/1"] > 0
    for key in ("reward/mean", "rollout/tokens", "response/length_mean"):
        assert row[key] == one_engine[0][key], key  # same weights and seeds: the same sequences
    assert row["rollout/logprob_abs_diff"] < 1e-4 and row["policy/ppo_kl_before_update"] < 1e-6


def test_a_run_without_dlc_trains_on_the_policy_only_engine(warm_cache, tmp_path):
    # GRPO (dlc.enabled=false): no memory model is trained, so the engine holds no memory stack to decode or push
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", *ARGS, "steps=2",
           "dlc.enabled=false", "algorithm.iac_alpha=0", f"warm_start.cache_dir={warm_cache}", "eval.interval=0"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=dict(os.environ))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    folder_cfg = json.loads((run_dir / "sglang_model_0" / "config.json").read_text())
    assert folder_cfg["dlc_policy_only"] is True and "dlc_memory_config" not in folder_cfg
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["rollout/logprob_abs_diff"] < 1e-4 and rows[0]["policy/ppo_kl_before_update"] < 1e-6
    assert "memory/loss" not in rows[0] and rows[1]["sync/bytes"] > 0
