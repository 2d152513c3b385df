"""End-to-end behaviour of `megatron-rlvr train` on CPU: outputs, exact resume after kill -9, step-0 invariants,
debug modes, and clear errors for bad input. Each run is a real subprocess of the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Small but real: tiny Qwen3 policy + memory, IAC + DLC, a short warm start shared through one cache folder.
SMALL = [
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "algorithm.micro_batch_size=8",
    "warm_start.steps=40", "warm_start.batch_size=32", "warm_start.gate=false", "logging.progress=false",
    "logging.tensorboard=false",
    "eval.interval=2", "eval.num_prompts=4", "eval.group_size=4",
]


def train(run_dir: Path, cache: Path, *overrides: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}",
           f"warm_start.cache_dir={cache}", *SMALL, *overrides]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"train failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("warm_start_cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache) -> Path:
    """An uninterrupted 6-step run checkpointing every 2 steps (also exercises the Hugging Face export)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    train(run_dir, cache, "steps=6", "checkpoint.save_interval=2", "checkpoint.keep_last=0")
    return run_dir


def test_the_saved_config_is_exactly_the_config_that_ran(reference_run, cache):
    # The CLI builds the config from these arguments; the run refuses to finish if anything changed it meanwhile
    # (runtime.check_config_unchanged), so config.yaml is the config of every step.
    from megatron_rlvr.config import load_config

    built = load_config(None, [f"run_dir={reference_run}", f"warm_start.cache_dir={cache}", *SMALL, "steps=6",
                               "checkpoint.save_interval=2", "checkpoint.keep_last=0"])
    saved = reference_run / "config.yaml"
    assert saved.read_text() == built.to_yaml()
    assert load_config(saved) == built


def test_run_writes_config_metrics_plots_checkpoint_and_hf_export(reference_run):
    rows = metrics(reference_run)
    assert [r["step"] for r in rows] == list(range(6))
    for key in ("reward/mean", "acc/avg_at_g", "acc/pass_at_g", "policy/entropy", "modes/distinct_correct_per_query",
                "memory/loss", "dlc/kl_cal_policy", "policy/clip_frac", "iac/weight_mean", "time/rollout",
                "throughput/rollout_tokens_per_s", "response/length_mean"):
        assert all(key in r for r in rows), key
    assert "eval/avg_at_g" in rows[1] and "eval/avg_at_g" in rows[-1]
    assert (reference_run / "config.yaml").is_file()
    assert (reference_run / "plots" / "over_sharpening.png").stat().st_size > 10_000
    assert (reference_run / "checkpoints" / "latest").read_text().strip() == "iter_0000006"
    from transformers import AutoModelForCausalLM

    for name in ("policy", "memory"):
        model = AutoModelForCausalLM.from_pretrained(reference_run / "hf" / name)
        assert type(model).__name__ == "Qwen3ForCausalLM"


def test_step0_ppo_kl_is_zero_and_trainer_agrees_with_engine(reference_run):
    first = metrics(reference_run)[0]
    assert first["policy/ppo_kl_before_update"] < 1e-6
    # The embedded engine (transformers modules) and Megatron compute the same log-probs for sampled tokens.
    assert first["rollout/logprob_abs_diff"] < 1e-4


def test_kill_9_then_resume_matches_uninterrupted_run_exactly(reference_run, cache, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", f"warm_start.cache_dir={cache}",
           *SMALL, "steps=6", "checkpoint.save_interval=2", "checkpoint.keep_last=0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(random.Random(os.getpid()).uniform(0.0, 3.0))  # somewhere in steps 2..6, maybe mid-save
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    train(run_dir, cache, "steps=6", "checkpoint.save_interval=2", "checkpoint.keep_last=0")  # load=auto resumes
    got, want = metrics(run_dir), metrics(reference_run)
    assert [r["step"] for r in got] == list(range(6)), f"killed after {killed_at}"
    for g, w in zip(got, want):
        for key in ("reward/mean", "policy/loss", "memory/loss", "policy/entropy", "acc/avg_at_g"):
            assert g[key] == w[key], (g["step"], key, g[key], w[key])


def test_training_starts_from_a_hugging_face_import_given_as_checkpoint_load(reference_run, cache, tmp_path):
    imported, run_dir = tmp_path / "imported", tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "convert", "from-hf", "--hf",
                          str(reference_run / "hf" / "policy"), "--out", str(imported), "--tp", "1", "--pp", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = train(run_dir, cache, "steps=1", f"checkpoint.load={imported}", "checkpoint.export_hf=false")
    assert "warm start" not in res.stdout  # the policy came from the import, not from the warm-start cache
    (row,) = metrics(run_dir)
    # Megatron (loaded from the import) and the engine (fed by the weight push) agree on the imported policy.
    assert row["rollout/logprob_abs_diff"] < 1e-4 and row["policy/ppo_kl_before_update"] < 1e-6


def test_rollout_only_then_train_only_replays_saved_rollouts(cache, tmp_path):
    gen_dir, replay_dir = tmp_path / "gen", tmp_path / "replay"
    train(gen_dir, cache, "steps=2", "mode=rollout_only", "logging.save_rollouts=true")
    rows = metrics(gen_dir)
    assert len(rows) == 2 and all("policy/loss" not in r for r in rows)
    assert sorted(p.name for p in (gen_dir / "rollouts").iterdir()) == ["step_000000.pt", "step_000001.pt"]
    train(replay_dir, cache, "steps=2", "mode=train_only", f"replay_dir={gen_dir / 'rollouts'}",
          "checkpoint.export_hf=false")
    replayed = metrics(replay_dir)
    assert [r["reward/mean"] for r in replayed] == [r["reward/mean"] for r in rows]
    assert all("policy/loss" in r for r in replayed)


@pytest.mark.parametrize(
    "override, message",
    [
        ("dlc.lam=-0.5", "dlc.lam=-0.5: lambda must be >= 0"),
        ("algorithm.iac_alpha=-1", "algorithm.iac_alpha=-1.0: IAC exponent alpha must be >= 0"),
        ("algorithm.estimator=ppo", "algorithm.estimator='ppo': unknown advantage estimator"),
        ("policy.parallel.tp=3", "policy.parallel.tp=3: tensor-parallel size must divide"),
        ("rollout.group_size=1", "rollout.group_size=1: the group estimator grpo needs at least 2"),
        ("mode=train_only", "replay_dir=None: train_only replays saved rollouts"),
        ("checkpoint.load=/nonexistent/ckpt", "checkpoint.load='/nonexistent/ckpt': checkpoint folder does not exist"),
    ],
)
def test_bad_config_exits_2_with_one_clear_line(override, message, tmp_path):
    res = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={tmp_path}", override],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
