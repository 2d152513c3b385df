"""A run that lasts days keeps every complete checkpoint and metrics line: retention, resume checks, the run-folder
lock, damaged checkpoints, a full disk and preemption signals, each tried on the real CLI (subprocesses) of the tiny
CPU run. One warm-start cache and one 4-step reference run are shared by the whole module."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREEMPTED = 75  # megatron_rlvr.errors.PREEMPTED_EXIT_CODE, spelled out: the launcher contract

SMALL = [
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "algorithm.micro_batch_size=8",
    "warm_start.steps=40", "warm_start.batch_size=32", "warm_start.gate=false", "logging.progress=false",
    "logging.tensorboard=false",
    "logging.plots=false", "eval.interval=0", "checkpoint.export_hf=false",
]
COMPARED = ("reward/mean", "policy/loss", "memory/loss", "policy/entropy", "acc/avg_at_g")


def cmd(run_dir: Path, cache: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}",
            f"warm_start.cache_dir={cache}", *SMALL, *overrides]


def train(run_dir: Path, cache: Path, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd(run_dir, cache, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if ok and res.returncode != 0:
        raise AssertionError(f"train failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def last_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res.stderr.strip().splitlines()[-1]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_trajectory(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in COMPARED:
            assert g[key] == w[key], (g["step"], key, g[key], w[key])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("warm_start_cache")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, cache) -> Path:
    """An uninterrupted 4-step run with checkpoints at steps 2 and 4 (never modified: tests work on copies)."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(run_dir, cache, "steps=4", "checkpoint.save_interval=2", "checkpoint.keep_last=0")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000004"
    return run_dir


@pytest.fixture
def copy_of_base(base_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


# ----------------------------------------------------------------------------------------------- retention
def test_a_fresh_start_over_newer_checkpoints_keeps_the_checkpoint_it_just_wrote(copy_of_base, cache):
    ckpts = copy_of_base / "checkpoints"
    train(copy_of_base, cache, "steps=1", "checkpoint.load=none", "checkpoint.keep_last=1")
    assert (ckpts / "latest").read_text().strip() == "iter_0000001"
    assert (ckpts / "iter_0000001" / "trainer_state.pt").is_file()
    # The earlier history's higher-numbered checkpoints are not this run's to delete either.
    assert (ckpts / "iter_0000004").is_dir() and (ckpts / "iter_0000002").is_dir()
    assert [r["step"] for r in metrics(copy_of_base)] == [0]
    assert list(copy_of_base.glob("metrics.jsonl.replaced-*")), "the earlier run's metrics were not kept"


def test_a_restart_with_latest_deleted_resumes_from_the_newest_checkpoint_and_drops_unfinished_ones(copy_of_base,
                                                                                                   cache):
    (copy_of_base / "checkpoints" / "latest").unlink()
    stale = copy_of_base / "checkpoints" / "iter_0000006.tmp"  # as a kill -9 during a save leaves it
    (stale / "policy").mkdir(parents=True)
    (stale / "policy" / "__0_0.distcp").write_bytes(b"half")
    res = train(copy_of_base, cache, "steps=4")
    assert "resumed from" in res.stdout and "iter_0000004" in res.stdout
    assert "latest is missing" in res.stderr
    assert (copy_of_base / "checkpoints" / "iter_0000002").is_dir()
    assert not stale.exists() and "removed the unfinished checkpoint folder" in res.stdout


def test_resuming_with_fewer_steps_than_done_is_refused_and_changes_nothing(copy_of_base, cache):
    before = digest(copy_of_base / "checkpoints")
    res = train(copy_of_base, cache, "steps=3", ok=False)
    assert res.returncode == 1
    assert "steps=3: checkpoint" in last_line(res) and "already at step 4" in last_line(res)
    assert digest(copy_of_base / "checkpoints") == before


# ----------------------------------------------------------------------------------------------- one process
def test_a_second_train_on_the_same_run_dir_fails_at_once_and_leaves_the_first_alone(copy_of_base, cache):
    first = subprocess.Popen(cmd(copy_of_base, cache, "steps=12"), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = copy_of_base / ".lock"
        deadline = time.time() + 300
        while first.poll() is None and time.time() < deadline and f"pid {first.pid}" not in (
                lock.read_text() if lock.exists() else ""):
            time.sleep(0.1)
        t0 = time.time()
        second = train(copy_of_base, cache, "steps=12", ok=False)
        assert first.poll() is None, "the first run ended before the second one tried"
        assert second.returncode == 1
        assert f"is in use by another train process (pid {first.pid}" in last_line(second)
        assert time.time() - t0 < 120
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    steps = [r["step"] for r in metrics(copy_of_base)]
    assert steps == list(range(len(steps))), steps  # no step twice, no line cut short


# ----------------------------------------------------------------------------------------------- config on resume
def test_resuming_with_a_changed_group_size_is_refused_unless_allowed_and_then_recorded(copy_of_base, cache):
    config_before = (copy_of_base / "config.yaml").read_text()
    res = train(copy_of_base, cache, "steps=5", "rollout.group_size=8", ok=False)
    assert res.returncode == 1
    assert "rollout.group_size 4 -> 8" in last_line(res)
    assert "checkpoint.allow_config_change=[rollout.group_size]" in last_line(res)
    assert (copy_of_base / "config.yaml").read_text() == config_before  # a refused resume rewrites nothing

    train(copy_of_base, cache, "steps=5", "rollout.group_size=8", "checkpoint.allow_config_change=[rollout.group_size]")
    (change,) = [json.loads(x) for x in (copy_of_base / "config_changes.jsonl").read_text().splitlines()]
    assert (change["step"], change["field"], change["checkpoint"], change["now"]) == (4, "rollout.group_size", 4, 8)
    assert metrics(copy_of_base)[-1]["rollout/sequences"] == 4 * 8


@pytest.mark.parametrize("override, message", [
    ("seed=1", "seed 0 -> 1"),
    ("algorithm.estimator=rloo", "algorithm.estimator 'grpo' -> 'rloo'"),
    ("policy.preset=tiny-deep", "policy.preset='tiny-deep': checkpoint"),
])
def test_changed_fields_that_break_exactness_are_refused_with_one_line(base_run, override, message, tmp_path):
    from megatron_rlvr.config import load_config
    from megatron_rlvr.errors import RunError
    from megatron_rlvr.run.guard import check_config_change

    cfg = load_config(None, [f"run_dir={tmp_path}", *SMALL, "steps=5", override])
    with pytest.raises(RunError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config_change(cfg, base_run / "checkpoints" / "iter_0000004", 4, tmp_path)
    safe = load_config(None, [f"run_dir={tmp_path}", *SMALL, "steps=9", "checkpoint.keep_last=7"])
    assert check_config_change(safe, base_run / "checkpoints" / "iter_0000004", 4, tmp_path) == []


# ----------------------------------------------------------------------------------------------- damaged checkpoints
def test_a_damaged_shard_is_named_and_the_run_resumes_exactly_from_the_previous_checkpoint(copy_of_base, base_run,
                                                                                            cache):
    shard = sorted((copy_of_base / "checkpoints" / "iter_0000004" / "policy").glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit in the middle of a tensor
    shard.write_bytes(bytes(data))
    res = train(copy_of_base, cache, "steps=4")
    assert f"{shard} does not match its SHA-256" in res.stderr
    assert "resuming from the newest intact checkpoint" in res.stderr and "iter_0000002" in res.stdout
    assert_same_trajectory(metrics(copy_of_base), metrics(base_run))


def _damage(ckpts: Path, how: str) -> None:
    it = ckpts / "iter_0000004"
    if how == "truncated trainer_state":
        os.truncate(it / "trainer_state.pt", 100)
    elif how == "missing integrity record":
        (it / "integrity.json").unlink()
        (it / "trainer_state.pt").unlink()
    elif how == "random bytes in a shard":
        shard = sorted((it / "memory").glob("*.distcp"))[0]
        shard.write_bytes(os.urandom(shard.stat().st_size))
    elif how == "garbage in latest":
        (ckpts / "latest").write_bytes(b"\xff\xfe\x00garbage")
    elif how == "latest names a deleted folder":
        shutil.rmtree(it)


@pytest.mark.parametrize("how, resumed", [
    ("truncated trainer_state", "iter_0000002"), ("missing integrity record", "iter_0000002"),
    ("random bytes in a shard", "iter_0000002"), ("garbage in latest", "iter_0000004"),
    ("latest names a deleted folder", "iter_0000002"),
])
def test_damaged_checkpoint_files_fall_back_to_the_newest_intact_checkpoint_with_a_warning(copy_of_base, how,
                                                                                          resumed, capsys):
    from megatron_rlvr.checkpoint.store import find_checkpoint

    ckpts = copy_of_base / "checkpoints"
    _damage(ckpts, how)
    assert find_checkpoint(ckpts, "auto") == ckpts / resumed
    assert "warning:" in capsys.readouterr().err


def test_an_explicitly_named_damaged_checkpoint_is_refused_naming_file_and_the_previous_one(copy_of_base):
    from megatron_rlvr.checkpoint.store import find_checkpoint
    from megatron_rlvr.errors import RunError

    ckpts = copy_of_base / "checkpoints"
    _damage(ckpts, "random bytes in a shard")
    with pytest.raises(RunError, match=r"iter_0000004 is damaged: .*memory/__0_0.distcp.*checkpoint.load=.*"
                                       r"iter_0000002"):
        find_checkpoint(ckpts, str(ckpts / "iter_0000004"))


# ----------------------------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: smaller than one checkpoint of the tiny run (about 7 MiB)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_during_a_checkpoint_write_says_so_and_keeps_metrics(small_disk, cache, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(small_disk)
    res = train(run_dir, cache, "steps=1", ok=False)
    assert res.returncode == 1
    line = last_line(res)
    assert "writing checkpoint" in line and "is full" in line and "previous checkpoint is intact" in line
    assert list(small_disk.iterdir()) == []  # the partial write was removed: the space is free again
    assert [r["step"] for r in metrics(run_dir)] == [0]


# ----------------------------------------------------------------------------------------------- preemption
def test_sigterm_finishes_the_step_checkpoints_exits_75_and_the_resume_is_exact(base_run, cache, tmp_path):
    run_dir = tmp_path / "run"
    args = ("steps=4", "checkpoint.save_interval=0", "checkpoint.keep_last=0")
    proc = subprocess.Popen(cmd(run_dir, cache, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)  # during step 1 (save_interval=0: no checkpoint would exist before the end)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED, err[-3000:]
    assert "SIGTERM received" in err and "stopped by SIGTERM" in out
    done = [r["step"] for r in metrics(run_dir)]
    assert 1 <= len(done) < 4 and done == list(range(len(done)))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"iter_{len(done):07d}"
    train(run_dir, cache, *args)
    assert_same_trajectory(metrics(run_dir), metrics(base_run))


def test_sigusr1_and_sigterm_set_the_stop_request_a_second_signal_ends_at_once(tmp_path):
    from megatron_rlvr.run.guard import StopSignals

    previous = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    try:
        stop = StopSignals().install()
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested() and stop.name == "SIGUSR1"
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    # A second signal exits at once with the requeue code (in a child: it calls os._exit).
    child = subprocess.run([sys.executable, "-c", (
        "import os, signal, time\n"
        "from megatron_rlvr.run.guard import StopSignals\n"
        "s = StopSignals().install()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.1)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(5)\n")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == PREEMPTED and "SIGTERM again: stopping now" in child.stderr
