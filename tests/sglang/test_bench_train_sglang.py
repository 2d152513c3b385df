"""`megatron-rlvr bench train --engine sglang` on the CPU SGLang engine: the trainer's own step, DLC on and off
taking turns on one DLC engine, then the policy-only engine a run with dlc.enabled=false uses, with the ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_times_dlc_on_off_and_the_policy_only_engine_side_by_side(tmp_path):
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "bench", "train", "--engine", "sglang", "--policy", "tiny",
           "--memory", "tiny-mem", "--prompts", "2", "--group-size", "2", "--max-new-tokens", "4",
           "--micro-batch-size", "4", "--steps", "2", "--skip-push", "--skip-embedded", "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    record = json.loads(res.stdout.strip().splitlines()[-1])
    for column in ("sglang_dlc_on", "sglang_dlc_off", "sglang_policy_only"):
        assert record[f"{column}_step_s"] > 0 and record[f"{column}_engine_restarts"] == 0
        assert record[f"{column}_rollout_tokens_per_s"] > 0
    # only DLC on trains the memory model
    assert record["sglang_dlc_on_memory_update_s"] > 0
    assert record["sglang_dlc_off_memory_update_s"] == record["sglang_policy_only_memory_update_s"] == 0
    assert record["dlc_on_over_off_step"] > 0 and record["dlc_on_over_policy_only_step"] > 0
    table = res.stdout[res.stdout.index("RL step phases"):]
    assert "timed steps" in table and "sglang policy only" in table and "WARNING" not in table
