"""Engine failures surface as SGLangEngineError naming the cause, and never take the caller's process down."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from megatron_rlvr.qwen3.shapes import get_preset
from megatron_rlvr.rollout.sglang.engine import SGLangEngine, SGLangEngineError
from megatron_rlvr.rollout.sglang.model_dir import dlc_config_dict
from megatron_rlvr.rollout.types import SamplingParams


def test_missing_or_foreign_model_folder_fails_before_starting_sglang(tmp_path):
    with pytest.raises(SGLangEngineError, match="config.json not found"):
        SGLangEngine(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps(get_preset("tiny").to_hf_config_dict()))
    with pytest.raises(SGLangEngineError, match="not a DLC model config"):
        SGLangEngine(str(tmp_path), device="cpu")
    cfg = dlc_config_dict(get_preset("tiny"), get_preset("tiny-mem"))
    cfg["dlc_memory_config"]["head_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SGLangEngineError, match="head_dim"):
        SGLangEngine(str(tmp_path), device="cpu")


def _scheduler_pid(engine) -> int:
    for pid in engine._child_pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"scheduler" in f.read():
                    return pid
        except OSError:
            continue
    raise AssertionError(f"no SGLang scheduler among the engine's children {engine._child_pids}")


def test_a_dead_scheduler_is_reported_on_the_next_call_instead_of_killing_the_caller(engine):
    """Runs last on the shared engine (it kills it): SGLang's default would kill this whole process tree."""
    pid = _scheduler_pid(engine)
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 60
    while time.time() < deadline and os.path.exists(f"/proc/{pid}") and \
            open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.2)
    time.sleep(2)  # let SGLang's watchdog notice and signal this process
    with pytest.raises(SGLangEngineError, match="died"):
        engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))
    with pytest.raises(SGLangEngineError, match="died"):
        engine.receive_tensors([("memory.model.norm.weight", torch.zeros(1))])
