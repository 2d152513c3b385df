"""Preemption on Slurm: `megatron-rlvr launch --executor slurm` asks for SIGUSR1 ahead of the time limit, marks the
job requeue-able, and its sbatch script requeues a trainer that exited 75 (checkpoint written) and nothing else."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_rlvr.launch import main as launch_main


@pytest.fixture
def nemo_home(tmp_path, monkeypatch):
    import nemo_run.config as nr_config

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # nemo-run's `invoke` reads stdin; pytest's refuses reads
    old = nr_config.get_nemorun_home()
    nr_config.set_nemorun_home(str(tmp_path / "nemo_run_home"))
    yield tmp_path / "nemo_run_home"
    nr_config.set_nemorun_home(old)


def _dryrun(tmp_path: Path, capsys, *extra: str) -> str:
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    rc = launch_main(["--executor", "slurm", "--recipe", "tiny_cpu", "--gpus-per-node", "1", "--account", "a",
                      "--partition", "p", "--time", "01:00:00", "--container-image", "img", "--container-mounts",
                      f"{shared}:/shared", *extra, f"run_dir={shared}/run", "--dryrun"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out[: out.index("# task script")]


def test_slurm_jobs_get_sigusr1_ahead_of_the_time_limit_and_are_requeueable(nemo_home, tmp_path, capsys):
    script = _dryrun(tmp_path, capsys)
    for line in ("#SBATCH --signal=USR1@180", "#SBATCH --requeue", "export TORCHX_MAX_RETRIES=3"):
        assert line in script.splitlines()
    script = _dryrun(tmp_path, capsys, "--preempt-signal-seconds", "600", "--max-requeues", "5")
    assert "#SBATCH --signal=USR1@600" in script and "export TORCHX_MAX_RETRIES=5" in script


def test_no_signal_and_no_requeue_when_switched_off(nemo_home, tmp_path, capsys):
    script = _dryrun(tmp_path, capsys, "--preempt-signal-seconds", "0", "--max-requeues", "0")
    assert "--signal" not in script and "#SBATCH --requeue" not in script


def _epilogue_requeues(script: str, exitcode: int, tmp_path: Path) -> bool:
    """Run the script's requeue filter and nemo-run's epilogue (everything after srun) with the trainer's exit
    code, `scontrol` being a recorder (no cluster here: tests/test_reliability_slurm.py runs a real one)."""
    lines = script.splitlines()
    fn = next(line for line in lines if line.startswith("scontrol() {"))
    epilogue = "\n".join(lines[lines.index("set -e", lines.index("exitcode=$?")):])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "scontrol.log"
    log.unlink(missing_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {log}\n')
    (bin_dir / "scontrol").chmod(0o755)
    body = f"export TORCHX_MAX_RETRIES=3 SLURM_JOB_ID=7\n{fn}\nexitcode={exitcode}\n{epilogue}\n"
    res = subprocess.run(["bash", "-c", body], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True,
                         text=True)
    assert res.returncode == exitcode, res.stderr
    return log.exists() and "requeue 7" in log.read_text()


def test_the_sbatch_script_requeues_exit_75_only(nemo_home, tmp_path, capsys):
    script = _dryrun(tmp_path, capsys)
    assert _epilogue_requeues(script, 75, tmp_path)
    assert not _epilogue_requeues(script, 1, tmp_path)  # a crash is not retried over and over
    assert not _epilogue_requeues(script, 0, tmp_path)


def test_bad_preemption_flags_are_one_clear_error(nemo_home, tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    rc = launch_main(["--executor", "slurm", "--recipe", "tiny_cpu", "--gpus-per-node", "1", "--account", "a",
                      "--partition", "p", "--container-image", "img", "--container-mounts", f"{shared}:/shared",
                      "--max-requeues", "-1", f"run_dir={shared}/run", "--dryrun"])
    assert rc == 2
    assert "launch error: --max-requeues=-1: must be >= 0" in capsys.readouterr().err
