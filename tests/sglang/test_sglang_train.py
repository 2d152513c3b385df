"""A short RLVR run with `rollout.engine=sglang`: the trainer starts an in-process SGLang engine holding the DLC
model, pushes both models' weights into it every step, and trains on what it generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_trainer_runs_iac_dlc_steps_on_sglang_and_agrees_with_megatron(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", "rollout.engine=sglang",
           "steps=2", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
           f"warm_start.cache_dir={tmp_path / 'ws'}", "warm_start.steps=40", "warm_start.gate=false", "logging.progress=false",
           "logging.tensorboard=false", "eval.interval=2", "eval.num_prompts=4", "eval.group_size=2",
           "checkpoint.export_hf=false"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=dict(os.environ))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    # SGLang (float32 on CPU) and Megatron agree on the sampled tokens' policy log-probs: the weight push
    # through the converter's name map reached the engine intact.
    assert rows[0]["rollout/logprob_abs_diff"] < 1e-4
    assert rows[0]["policy/ppo_kl_before_update"] < 1e-6
    assert rows[0]["rollout/tokens"] > 0 and "eval/avg_at_g" in rows[1]
    assert rows[1]["sync/bytes"] > 0
