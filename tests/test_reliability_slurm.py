"""Slurm for real: a single-node Slurm (Debian's slurmctld + slurmd + munge, started by tools/slurm_single_node.sh)
runs the tiny CPU job submitted by `megatron-rlvr launch --executor slurm` through nemo-run; the job is requeued
mid-run with `scontrol requeue` (Slurm sends SIGTERM: the trainer checkpoints), runs again, resumes and ends with
metrics identical to an uninterrupted run; SIGUSR1 (what `--signal=USR1@N` sends before the time limit) makes the
trainer exit 75 and the job script requeue it. Skipped, with the reason, where the daemons cannot start."""

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
    "algorithm.micro_batch_size=8", "warm_start.steps=40", "warm_start.batch_size=32", "warm_start.gate=false",
    "logging.progress=false",
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


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Warm-start cache and metrics of the same job run straight through, without Slurm."""
    root = tmp_path_factory.mktemp("reference")
    ref = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "train", "--recipe", "tiny_cpu",
                          f"warm_start.cache_dir={root / 'cache'}", *OVERRIDES, f"run_dir={root / 'run'}"],
                         cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    return root / "cache", _metrics(root / "run")


def _submit(slurm: dict, cache: Path, tmp_path: Path) -> tuple[str, Path]:
    run_dir = tmp_path / "run"
    launch = subprocess.run(
        [sys.executable, "-m", "megatron_rlvr.cli", "launch", "--executor", "slurm", "--no-container", "--cpu-only",
         "--gpus-per-node", "1", "--account", "ci", "--partition", "debug", "--time", "00:30:00", "--master-port",
         str(29600 + os.getpid() % 300), "--recipe", "tiny_cpu", f"warm_start.cache_dir={cache}", *OVERRIDES,
         f"run_dir={run_dir}"],
        cwd=tmp_path, env={**slurm, "NEMORUN_HOME": str(tmp_path / "nemo_run")}, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    job_id = re.search(r"submitted train: slurm_tunnel://nemo_run/(\d+)", launch.stdout).group(1)
    deadline = time.time() + 600
    while len(_metrics(run_dir)) < 1 and time.time() < deadline:  # mid-run: step 0 is logged
        assert _job(slurm, job_id).get("JobState") in ("PENDING", "RUNNING"), _job(slurm, job_id)
        time.sleep(0.2)
    return job_id, run_dir


def _wait_done(slurm: dict, job_id: str) -> dict[str, str]:
    deadline = time.time() + 600
    pending_since = None
    while time.time() < deadline:
        job = _job(slurm, job_id)
        if job.get("JobState") == "PENDING" and job.get("Reason") == "BeginTime":
            # Slurm holds a requeued job back for a while; the test need not wait for that. But not at once:
            # slurmd revokes the old job credential at the requeue, with one-second resolution, and refuses a
            # start within that second ("Job credential revoked": the job then ends FAILED; seen in CI).
            pending_since = pending_since or time.time()
            if time.time() - pending_since >= 3:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm, check=False)
        else:
            pending_since = None
        if job.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return job
        time.sleep(1)
    return job


def _check_resumed_exactly(tmp_path: Path, run_dir: Path, want: list[dict], signal_name: str) -> None:
    logs = sorted((tmp_path / "nemo_run").rglob("log-*.out"))
    first = next(p for p in logs if p.name.endswith("_0.out")).read_text()
    second = next(p for p in logs if p.name.endswith("_1.out")).read_text()
    assert f"stopped by {signal_name} before step" in first, first[-2000:]
    assert "resumed from" in second and "done: 10 steps" in second, second[-2000:]
    got = _metrics(run_dir)
    assert [r["step"] for r in got] == list(range(10))
    for g, w in zip(got, want):
        for key in ("reward/mean", "policy/loss", "memory/loss", "policy/entropy"):
            assert g[key] == w[key], (g["step"], key, g[key], w[key])


def test_a_slurm_job_requeued_mid_run_resumes_exactly(slurm, reference, tmp_path):
    cache, want = reference
    job_id, run_dir = _submit(slurm, cache, tmp_path)
    subprocess.run(["scontrol", "requeue", job_id], env=slurm, check=True)  # what preemption does: SIGTERM
    job = _wait_done(slurm, job_id)
    assert job.get("JobState") == "COMPLETED" and job.get("Restarts") == "1", job
    _check_resumed_exactly(tmp_path, run_dir, want, "SIGTERM")


def test_sigusr1_ahead_of_the_time_limit_exits_75_and_the_job_script_requeues_it(slurm, reference, tmp_path):
    cache, want = reference
    job_id, run_dir = _submit(slurm, cache, tmp_path)
    # What `#SBATCH --signal=USR1@180` does before the time limit: SIGUSR1 to the job's tasks (not the script).
    subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm, check=True)
    job = _wait_done(slurm, job_id)
    assert job.get("JobState") == "COMPLETED" and job.get("Restarts") == "1", job
    script_log = next((tmp_path / "nemo_run").rglob("sbatch_*.out")).read_text()
    assert "job exited with code 75" in script_log  # the trainer's code; the script requeued the job for it
    _check_resumed_exactly(tmp_path, run_dir, want, "SIGUSR1")
