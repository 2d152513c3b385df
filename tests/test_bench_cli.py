"""`megatron-rlvr bench kernels|train|rollout|convert`: one command, one harness (provenance row, CSV, last line one
JSON object); the train benchmark times the trainer's own RL step. The CPU-runnable paths run here for real."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "bench", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=None if env is None else {**os.environ, **env})
    if check and res.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                             f"{res.stderr[-3000:]}")
    return res


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_without_a_target_lists_all_four():
    out = bench().stdout
    assert "{kernels,train,rollout,convert}" in out


@pytest.mark.parametrize("target", ["kernels", "train", "convert"])
def test_every_target_answers_help_with_its_own_options(target):
    out = bench(target, "--help").stdout
    assert out.startswith(f"usage: megatron-rlvr bench {target}")


def test_rollout_outside_the_sglang_environment_says_where_it_runs():
    pytest.importorskip("torch")
    try:
        import sglang  # noqa: F401
        pytest.skip("SGLang is installed here: the message is for environments without it")
    except ImportError:
        pass
    res = bench("rollout", "--help", check=False)
    assert res.returncode != 0 and "needs SGLang" in res.stderr and "tools/setup_sglang_env.sh" in res.stderr


def test_bench_train_on_cpu_times_each_phase_of_the_trainers_step_and_ends_with_one_json_row(tmp_path):
    res = bench("train", "--policy", "tiny", "--memory", "tiny-mem", "--prompts", "2", "--group-size", "2",
                "--max-new-tokens", "4", "--micro-batch-size", "4", "--steps", "1", "--out", str(tmp_path))
    record = last_json(res.stdout)
    assert {"device", "date", "commit"} <= set(record) and record["device"] == "cpu"
    for phase in ("rollout", "logprob_recompute", "policy_update", "memory_update", "weight_push", "step"):
        assert record[f"embedded_dlc_on_{phase}_s"] >= 0.0
    assert record["embedded_dlc_on_step_s"] > 0 and record["rl_over_plain"] > 0
    assert record["embedded_dlc_on_engine_restarts"] == 0 and "engine restarts so far" in res.stdout
    assert "WARNING: a rollout engine was restarted" not in res.stdout
    rows = list(csv.DictReader(open(tmp_path / "bench_train_embedded.csv")))
    assert len(rows) == 1 and rows[0]["commit"] == record["commit"]


def test_bench_train_at_ragged_lengths_times_padded_packed_and_plain_on_the_same_real_tokens(tmp_path):
    res = bench("train", "--response-lengths", "lognormal:median=24,max=64", "--policy", "tiny", "--memory",
                "tiny-mem", "--prompts", "2", "--group-size", "4", "--micro-batch-size", "2", "--max-tokens", "128",
                "--steps", "2", "--prompt-len", "8", "--out", str(tmp_path),
                env={"TRITON_INTERPRET": "1"})  # the fused log-prob kernels' variant runs too (interpreted)
    record = last_json(res.stdout)
    for variant in ("padded", "packed", "packed_triton"):
        for phase in ("logprob_recompute", "policy_update", "memory_update"):
            assert record[f"{variant}_{phase}_s"] > 0
    assert record["plain_policy_update_s"] > 0 and record["real_tokens"] < record["padded_tokens"]
    assert record["packed_over_plain"] == pytest.approx(
        record["plain_policy_update_s"] / record["packed_policy_update_s"], rel=1e-2)
    assert "plain packed LM step" in res.stdout and "(target >= 0.95)" in res.stdout
    assert record["packed_triton_over_plain"] > 0 and "packed, triton log-probs" in res.stdout


def test_the_step_table_says_when_an_engine_restart_makes_its_numbers_no_measurement(capsys):
    from megatron_rlvr.bench.train import PHASES, _print_table

    row = {**{k: 1.0 for k in PHASES + ("step",)}, "rollout_tokens_per_s": 100.0, "alloc_retries": 0}
    _print_table("steps", {"sglang DLC on": {**row, "engine_restarts": 0}, "sglang DLC off": dict(row)})
    assert "WARNING" not in capsys.readouterr().out
    restarted = {**row, "engine_restarts": 1}
    _print_table("steps", {"sglang DLC on": restarted, "sglang DLC off": restarted})
    out = capsys.readouterr().out
    assert "WARNING: a rollout engine was restarted" in out and "rerun before using these numbers" in out


def test_bench_convert_on_cpu_round_trips_bit_identically_and_reports_peak_memory(tmp_path):
    res = bench("convert", "--preset", "tiny", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path))
    record = last_json(res.stdout)
    assert record["round_trip_bit_identical"] is True
    assert record["from_hf"]["peak_rss_main"] > 0 and record["to_hf"]["peak_pss_tree"] > 0
    assert (tmp_path / "bench_convert.csv").is_file() and not (tmp_path / "work").exists()


def test_result_rows_name_the_commit_and_say_when_the_tree_differs_from_it(tmp_path):
    from megatron_rlvr.bench.harness import git_commit

    repo, plain = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir(), plain.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "f.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "f.py").write_text("a = 2\n")  # a copied tree whose files are not that commit's
    assert git_commit(repo) == f"{head}+modified"
    assert git_commit(plain) == "unknown"


def test_bench_train_refuses_an_sglang_arg_without_a_value_in_one_line():
    res = bench("train", "--sglang-arg", "sleep_on_idle", check=False)
    assert res.returncode == 2
    assert "--sglang-arg 'sleep_on_idle': expected KEY=VALUE" in res.stderr
    assert "Traceback" not in res.stderr


def test_configurations_take_turns_step_by_step_after_one_warm_up_each():
    # Drift over a run (allocator growth, clocks, engine caches) must fall on DLC on and off alike, not on whichever
    # column is timed first.
    from megatron_rlvr.bench.train import time_interleaved

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def step(self, step, record=True):
            calls.append((self.name, step, record))

        def result(self):
            return {"steps": sum(1 for n, _, r in calls if n == self.name and r)}

    out = time_interleaved({"on": Fake("on"), "off": Fake("off")}, steps=2, first_step=5)
    assert calls == [("on", 5, False), ("off", 6, False), ("on", 7, True), ("off", 8, True), ("on", 9, True),
                     ("off", 10, True)]
    assert out == {"next_step": 11, "on": {"steps": 2}, "off": {"steps": 2}}
