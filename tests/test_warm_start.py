"""Warm start: a schedule that converges, a quality gate that stops a run started from a broken warm start (with
the numbers and the fix), a cache that runs sharing it cold train once, and an lr schedule that does what it says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from megatron_rlvr.config import OptimConfig, load_config
from megatron_rlvr.run.warm_start import WarmStartError, check_quality, loss_bound, warm_start_optim
from tests.test_train_e2e import ROOT, SMALL, train

QUICK = ["steps=1", "checkpoint.export_hf=false", "eval.interval=0"]


def test_the_gate_names_the_loss_the_bound_and_the_fix(tmp_path):
    cfg = load_config(overrides=["policy.init_seed=3"])
    with pytest.raises(WarmStartError) as err:
        check_quality({"policy": 1.147, "memory": 0.41}, 0.6, cfg, tmp_path)
    msg = str(err.value)
    assert "policy's held-out loss is 1.147" in msg and "0.6" in msg and "memory" not in msg.split("above")[0]
    assert "policy.init_seed=3" in msg and "warm_start.steps" in msg and "warm_start.gate=false" in msg
    check_quality({"policy": 0.41}, 0.6, cfg, tmp_path)  # a converged start passes


def test_the_bound_is_the_tasks_unless_configured_or_switched_off():
    from megatron_rlvr.tasks import build_task

    cfg = load_config()
    task = build_task(cfg.task)
    assert loss_bound(cfg, task) == 0.7
    assert loss_bound(load_config(overrides=["warm_start.max_loss=0.9"]), task) == 0.9
    assert loss_bound(load_config(overrides=["warm_start.gate=false"]), task) is None

    class Unbounded:
        pass

    assert loss_bound(cfg, Unbounded()) is None


def test_the_warm_start_lr_warms_up_then_decays_by_cosine_to_its_floor():
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler  # noqa: F401 (Megatron's schedule)

    cfg = load_config()
    o = warm_start_optim(cfg)
    assert (o.lr, o.lr_warmup_steps, o.lr_decay_style, o.lr_decay_steps, o.min_lr_ratio) == (1e-3, 40, "cosine",
                                                                                            400, 0.1)
    short = warm_start_optim(load_config(overrides=["warm_start.steps=40"]))
    assert short.lr_warmup_steps == 4  # at most a tenth of the steps
    lrs = _lrs(o, 400)
    assert lrs[0] == pytest.approx(1e-3 / 40) and lrs[39] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4, rel=1e-2)
    assert all(a >= b for a, b in zip(lrs[40:], lrs[41:]))  # monotone decay after the warm-up


def _lrs(o: OptimConfig, steps: int) -> list[float]:
    """The lr TrainableModel's scheduler gives at each optimizer step, on a one-parameter optimizer."""
    import torch
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_rlvr.update.trainable import TrainableModel

    class _Opt:
        param_groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.0}]

    fake = TrainableModel.__new__(TrainableModel)
    fake.optim_cfg, fake.optimizer = o, _Opt()
    sched = TrainableModel._build_scheduler(fake)
    assert isinstance(sched, OptimizerParamScheduler)
    out = []
    for _ in range(steps):
        sched.step(1)
        out.append(_Opt.param_groups[0]["lr"])
    return out


def test_a_deliberately_broken_warm_start_stops_the_run_and_is_not_cached(tmp_path):
    cache = tmp_path / "cache"
    # Five steps cannot fit the task: the held-out loss stays far above the bound.
    res = train(tmp_path / "run", cache, *QUICK, "warm_start.steps=5", "warm_start.gate=true", check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "warm start did not converge" in out and "warm_start.gate=false" in out, out[-3000:]
    assert not list(cache.glob("*/DONE")) and not list(cache.glob("*.tmp-*"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_runs_sharing_a_cold_warm_start_cache_train_it_once_and_both_finish(tmp_path):
    cache = tmp_path / "cache"
    cmds = [[sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={tmp_path / f'run{i}'}",
             f"warm_start.cache_dir={cache}", *SMALL, *QUICK, f"dlc.lam={0.1 * i}"] for i in (1, 2)]
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    trained = sum("supervised steps" in o for o in outs)
    cached = sum("warm start: cached at" in o for o in outs)
    assert (trained, cached) == (1, 1), outs
    assert len(list(cache.glob("*/DONE"))) == 1 and not list(cache.glob("*.tmp-*"))
