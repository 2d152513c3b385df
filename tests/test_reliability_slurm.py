"""Slurm for real: a single-node Slurm (Debian's slurmctld + slurmd + munge, started by tools/slurm_single_node.sh)
runs the tiny CPU job submitted by `megatron-rlvr launch --executor slurm` through nemo-run; the job is requeued
mid-run with `scontrol requeue` (Slurm sends SIGTERM: the trainer checkpoints), runs again, resumes and ends with
metrics identical to an uninterrupted run. Skipped, with the reason, where the daemons cannot start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "steps=10", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
    "algorithm.micro_batch_size=8", "warm_start.steps=40", "warm_start.batch_size=32", "logging.progress=false",
    "logging.tensorboard=false", "logging.plots=false", "eval.interval=0", "checkpoint.export_hf=false",
    "checkpoint.save_interval=0",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Environment of a running single-node Slurm; stopped (by pid) at the end of the module."""
    if sys.platform != "linux":
        pytest.skip("single-node Slurm needs Linux")
    state = tmp_path_factory.mktemp("slurm")
    res = subprocess.run(["bash", str(ROOT / "tools" / "slurm_single_node.sh"), "start", str(state)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        subprocess.run(["bash", str(ROOT / "tools" / "slurm_single_node.sh"), "stop", str(state)], check=False)
        reason = (res.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"single-node Slurm cannot start here: {reason}")
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    yield env
    subprocess.run(["scancel", "--user", str(os.getuid())], env=env, check=False)
    subprocess.run(["bash", str(ROOT / "tools" / "slurm_single_node.sh"), "stop", str(state)], check=False)


def _job(env: dict, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_a_slurm_job_requeued_mid_run_resumes_exactly(slurm, tmp_path):
    cache = tmp_path / "cache"
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    common = ["--recipe", "tiny_cpu", f"warm_start.cache_dir={cache}", *OVERRIDES]
    ref = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "train", *common, f"run_dir={reference}"],
                         cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]

    launch = subprocess.run(
        [sys.executable, "-m", "megatron_rlvr.cli", "launch", "--executor", "slurm", "--no-container", "--cpu-only",
         "--gpus-per-node", "1", "--account", "ci", "--partition", "debug", "--time", "00:30:00", "--master-port",
         str(29600 + os.getpid() % 300), *common, f"run_dir={run_dir}"],
        cwd=tmp_path, env={**slurm, "NEMORUN_HOME": str(tmp_path / "nemo_run")}, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    job_id = re.search(r"submitted train: slurm_tunnel://nemo_run/(\d+)", launch.stdout).group(1)

    deadline = time.time() + 600
    while len(_metrics(run_dir)) < 1 and time.time() < deadline:
        assert _job(slurm, job_id).get("JobState") in ("PENDING", "RUNNING"), _job(slurm, job_id)
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job_id], env=slurm, check=True)  # what preemption does

    while time.time() < deadline:
        job = _job(slurm, job_id)
        if job.get("JobState") == "PENDING" and job.get("Reason") == "BeginTime":
            # Slurm holds a requeued job back for a while; the test need not wait for that
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm, check=False)
        if job.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(1)
    assert job.get("JobState") == "COMPLETED" and job.get("Restarts") == "1", job

    logs = sorted((tmp_path / "nemo_run").rglob("log-*.out"))
    first = next(p for p in logs if p.name.endswith("_0.out")).read_text()
    second = next(p for p in logs if p.name.endswith("_1.out")).read_text()
    assert "stopped by SIGTERM before step" in first, first[-2000:]
    assert "resumed from" in second and "done: 10 steps" in second, second[-2000:]
    got, want = _metrics(run_dir), _metrics(reference)
    assert [r["step"] for r in got] == list(range(10))
    for g, w in zip(got, want):
        for key in ("reward/mean", "policy/loss", "memory/loss", "policy/entropy"):
            assert g[key] == w[key], (g["step"], key, g[key], w[key])
