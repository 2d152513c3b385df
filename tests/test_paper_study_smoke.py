"""The paper study's command (examples/paper_study): its statistics, and a one-step smoke run of `run` + report."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.paper_study import grid
from examples.paper_study.stats import compare, sign_flip_p, t_interval, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_sign_flip_test_is_exact_over_all_sign_patterns():
    assert sign_flip_p([1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 32)  # only all-plus and all-minus reach it
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([3.0, 1.0, 1.0]) == pytest.approx(2 / 8)


def test_t_interval_is_mean_plus_minus_t_times_standard_error():
    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert lo == pytest.approx(2 - 4.303 / math.sqrt(3)) and hi == pytest.approx(2 + 4.303 / math.sqrt(3))


def test_verdict_needs_the_interval_to_exclude_zero_and_reads_the_expected_sign():
    real = compare({s: 1.0 + 0.01 * s for s in range(5)}, {s: 0.5 for s in range(5)})
    assert verdict(real).startswith("agrees") and verdict(real, expect_positive=False).startswith("DISAGREES")
    noise = compare({0: 1.0, 1: 0.0, 2: 0.6}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert verdict(noise).startswith("no significant difference")
    assert verdict(compare({0: 1.0}, {1: 0.0})).startswith("not measured")


def test_grid_rows_are_valid_trainer_configs():
    from megatron_rlvr.config import load_config

    for name, overrides in grid.ROWS.items():
        load_config(overrides=[*grid.COMMON, *overrides])  # raises ConfigError naming the field
    assert all(row in grid.ROWS for members in grid.GROUPS.values() for _, row in members)
    assert len(grid.BUDGETS["full"]["seeds"]) >= 5


def test_one_step_smoke_run_writes_results_skips_them_on_rerun_and_builds_the_report(tmp_path):
    out, doc = tmp_path / "out", tmp_path / "docs" / "RESULTS.md"
    cmd = [sys.executable, "-m", "examples.paper_study", "run", "--budget", "smoke", "--out", str(out), "--work",
           str(tmp_path / "work"), "--jobs", "1", "--device", "cpu", "--tag", "smoke", "--extra",
           "warm_start.enabled=false", "eval.group_size=4", "eval.num_prompts=2", "rollout.prompts_per_step=2",
           "--doc", str(doc)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "results_smoke.jsonl").read_text().splitlines()]
    runs = [r for r in recs if r["type"] == "run"]
    assert len(runs) == 1 and runs[0]["rc"] == 0 and runs[0]["row"] == "GRPO"
    assert "eval/pass_at_4" in runs[0]["evals"][-1] and "offpolicy/shift/p50" in runs[0]["train"][0]
    assert recs[-1]["type"] == "call" and recs[-1]["runs_finished"] == 1
    text = doc.read_text()
    assert "## Table 3 (paper): methods" in text and "| GRPO | 1 |" in text
    assert (doc.parent / "figures" / "paper_study_table3.png").is_file()
    # a second call finds the run done and trains nothing
    res = subprocess.run(cmd[:-2], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "1 already done, 0 to run" in res.stdout
