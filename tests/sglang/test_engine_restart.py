"""A dead colocated SGLang engine is restarted: both models' weights are pushed again, the step's rollouts are
redrawn with the same seeds, the restart is counted in the metrics; with no restarts left the run stops with a
clear error and its last checkpoint intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["rollout.engine=sglang", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "warm_start.steps=40", "warm_start.gate=false", "logging.progress=false", "logging.tensorboard=false",
        "checkpoint.export_hf=false",
        "eval.interval=0", "checkpoint.save_interval=1", "logging.plots=false"]


def _kill_scheduler_after_first_step(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    import psutil

    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", *ARGS, *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    try:
        deadline = time.time() + 900
        while not (metrics.is_file() and metrics.read_text().strip()) and proc.poll() is None:
            assert time.time() < deadline, "step 0 never finished"
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        schedulers = []
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "scheduler" in " ".join(child.cmdline()):
                    schedulers.append(child)
            except psutil.Error:  # exited (or a zombie) meanwhile: not the live scheduler
                continue
        assert schedulers, "no SGLang scheduler process under the trainer"
        schedulers[0].send_signal(signal.SIGKILL)  # the engine dies in the middle of the run
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def test_a_killed_engine_is_restarted_and_the_run_finishes_with_matching_log_probs(tmp_path):
    res = _kill_scheduler_after_first_step(tmp_path / "run", "steps=3", f"warm_start.cache_dir={tmp_path / 'ws'}")
    assert res.returncode == 0, res.stdout[-5000:]
    assert "rollout engine died" in res.stdout and "restart 1/2" in res.stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[-1]["rollout/engine_restarts"] >= 1
    # the restarted engine got both models' current weights: it agrees with Megatron again
    assert max(r["rollout/logprob_abs_diff"] for r in rows) < 1e-4


def test_with_no_restarts_left_the_run_stops_clearly_and_keeps_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    res = _kill_scheduler_after_first_step(run_dir, "steps=4", "rollout.max_engine_restarts=0",
                                           f"warm_start.cache_dir={tmp_path / 'ws'}")
    assert res.returncode != 0
    assert "restart(s) did not help" in res.stdout and "is intact" in res.stdout
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (run_dir / "checkpoints" / latest / "trainer_state.pt").is_file()
