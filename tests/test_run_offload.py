"""Colocated engines and the trainer share the accelerator: around the update the engine gives its memory back and
takes it again, and PyTorch's cached blocks must be back with the driver before it does (issue 23: an H200 run lost
its SGLang engine at resume without that)."""
from types import SimpleNamespace

import pytest
import torch

from megatron_rlvr.rollout.engine import RolloutEngineError
from megatron_rlvr.run import runtime


class RecordingEngine:
    """Only the two calls `engine_offloaded` makes; `fail` makes one of them raise as a dead SGLang engine does."""

    def __init__(self, events: list, fail: str = ""):
        self.events, self.fail = events, fail

    def release_memory(self) -> bool:
        self.events.append("release")
        if self.fail == "release":
            raise RolloutEngineError("engine died during release_memory_occupation")
        return self.fail != "nothing held"

    def resume_memory(self) -> None:
        self.events.append("resume")
        if self.fail == "resume":
            raise RolloutEngineError("engine died during resume_memory_occupation")


def _run(engine, placement: str = "colocated"):
    return SimpleNamespace(engine=engine, cfg=SimpleNamespace(rollout=SimpleNamespace(placement=placement)))


@pytest.fixture
def events(monkeypatch):
    """Pretend CUDA is up and record when the cache is emptied, in the same list as the engine's calls."""
    out: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: out.append("empty_cache"))
    return out


def test_the_cache_goes_back_to_the_driver_before_a_colocated_engine_resumes(events):
    with runtime.engine_offloaded(_run(RecordingEngine(events))):
        events.append("update")
    assert events == ["release", "update", "empty_cache", "resume"]


def test_an_engine_that_gave_nothing_back_resumes_without_emptying_the_trainers_cache(events):
    """The embedded engine on a GPU: emptying the cache every step would only make the next update re-allocate."""
    with runtime.engine_offloaded(_run(RecordingEngine(events, fail="nothing held"))):
        events.append("update")
    assert events == ["release", "update", "resume"]


def test_a_dedicated_engine_is_neither_released_nor_resumed_and_the_cache_is_left_alone(events):
    with runtime.engine_offloaded(_run(RecordingEngine(events), placement="dedicated")):
        events.append("update")
    assert events == ["update"]


def test_an_engine_dead_at_release_is_left_for_the_weight_push_to_restart(events, capsys):
    with runtime.engine_offloaded(_run(RecordingEngine(events, fail="release"))):
        events.append("update")
    assert events == ["release", "update"]  # no resume of a dead engine
    assert "restarted at the weight push" in capsys.readouterr().out


def test_a_failed_resume_does_not_fail_the_update_and_says_the_engine_is_restarted(events, capsys):
    with runtime.engine_offloaded(_run(RecordingEngine(events, fail="resume"))):
        events.append("update")
    assert events == ["release", "update", "empty_cache", "resume"]
    assert "failed to resume its memory" in capsys.readouterr().out


def test_a_rebuilt_engine_starts_after_the_cache_is_emptied(events, monkeypatch):
    """SGLang sizes its KV pool from the memory free when it starts: a restart must not see PyTorch's cache as used."""
    class Dead:
        def shutdown(self):
            events.append("shutdown")

    class Transport:
        def close(self):
            events.append("close")

    run = SimpleNamespace(engine=Dead(), transport=Transport(), engine_restarted=False, kv_pool_tokens=None)
    monkeypatch.setattr(runtime, "build_engine", lambda r: events.append("build"))
    runtime._rebuild_engine(run)
    assert events == ["close", "shutdown", "empty_cache", "build"] and run.engine_restarted


class _Pool:
    """An engine that reports its KV capacity as SGLang's does (or fails to)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def kv_pool_tokens(self):
        if isinstance(self.tokens, Exception):
            raise self.tokens
        return self.tokens

    def shutdown(self):
        pass


def _restart_into(monkeypatch, first: int, new_engine) -> SimpleNamespace:
    run = SimpleNamespace(engine=_Pool(first), transport=None, engine_restarted=False, kv_pool_tokens=first)
    monkeypatch.setattr(runtime, "build_engine", lambda r: setattr(r, "engine", new_engine))
    runtime._rebuild_engine(run)
    return run


def test_a_restarted_engine_with_a_much_smaller_kv_pool_is_reported_with_the_fix(events, monkeypatch, capsys):
    _restart_into(monkeypatch, 300_000, _Pool(90_000))
    out = capsys.readouterr().out
    assert "KV pool holds 90000 tokens, the first engine's 300000" in out and "restart the run" in out


@pytest.mark.parametrize("new", [_Pool(300_000), _Pool(285_000), _Pool(None), _Pool(RuntimeError("dead")), object()])
def test_a_restart_with_the_first_engines_pool_or_no_report_says_nothing(events, monkeypatch, capsys, new):
    run = _restart_into(monkeypatch, 300_000, new)
    assert "WARNING" not in capsys.readouterr().out and run.kv_pool_tokens == 300_000


def test_releasing_the_cache_is_a_no_op_without_an_initialised_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: pytest.fail("emptied an uninitialised CUDA cache"))
    runtime.release_cached_accelerator_memory()


def test_a_step_releases_a_colocated_engine_for_the_recompute_and_both_updates_and_resumes_before_the_push(
        events, monkeypatch):
    # The log-prob recompute is training-side work: it runs with the engine's memory given back, like the updates
    from megatron_rlvr import step as step_mod
    from megatron_rlvr.run.metrics import PhaseTimer

    mask = torch.ones(2, 3, dtype=torch.bool)
    batch = SimpleNamespace(response_mask=mask, logprob_rollout_policy=torch.zeros(2, 3))
    for name, ret in (("rollout_metrics", {}), ("rollout_diversity", {}), ("assign_advantages", {}),
                      ("update_policy", {"policy/ppo_kl_before_update": 0.0}), ("update_memory", {}),
                      ("check_logprob_gap", None), ("push_weights", 0)):
        monkeypatch.setattr(step_mod, name, lambda *a, _n=name, _r=ret, **k: events.append(_n) or _r)
    monkeypatch.setattr(step_mod, "recompute_logprobs",
                        lambda *a, **k: events.append("recompute") or (torch.zeros(2, 3), torch.zeros(2, 3)))
    cfg = SimpleNamespace(algorithm=SimpleNamespace(micro_batch_size=1), seed=0, logging=SimpleNamespace(
        save_rollouts=False), rollout=SimpleNamespace(temperature=1.0, placement="colocated", max_new_tokens=3),
        checks=SimpleNamespace(logprob_gap="warn", logprob_gap_tolerance=1.0))
    source = type("Source", (), {"__call__": lambda self, run, step: batch, "live": True})()
    run = SimpleNamespace(cfg=cfg, models={"policy": SimpleNamespace(dtype=torch.float32), "memory": object()},
                          engine=RecordingEngine(events), source=source, task=SimpleNamespace(pop_stats=dict),
                          trains=True, reference=None, start_step=0, engine_dtype=torch.float32, transport=None,
                          engine_restarts=0, layout=None)
    monkeypatch.setattr(runtime, "with_engine_restarts", lambda run, step, what, fn, **k: fn())
    step_mod.rl_step(run, 0, PhaseTimer())
    core = [e for e in events if e in ("release", "recompute", "update_policy", "update_memory", "resume",
                                       "push_weights")]
    assert core == ["release", "recompute", "update_policy", "update_memory", "resume", "push_weights"]
