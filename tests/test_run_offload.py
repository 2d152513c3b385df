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

    def release_memory(self) -> None:
        self.events.append("release")
        if self.fail == "release":
            raise RolloutEngineError("engine died during release_memory_occupation")

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

    run = SimpleNamespace(engine=Dead(), transport=Transport(), engine_restarted=False)
    monkeypatch.setattr(runtime, "build_engine", lambda r: events.append("build"))
    runtime._rebuild_engine(run)
    assert events == ["close", "shutdown", "empty_cache", "build"] and run.engine_restarted


def test_releasing_the_cache_is_a_no_op_without_an_initialised_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: pytest.fail("emptied an uninitialised CUDA cache"))
    runtime.release_cached_accelerator_memory()
