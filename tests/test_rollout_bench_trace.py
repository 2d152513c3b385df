"""The SGLang benchmark's profile summary: GPU busy time counts overlapping streams once, per decode step."""

import gzip
import json

import pytest

from megatron_rlvr.bench.rollout import summarize_trace


def _write(path, events):
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return path


def test_busy_time_is_the_union_of_gpu_intervals_and_cpu_events_are_ignored(tmp_path):
    events = [
        dict(ph="X", cat="kernel", name="gemm", ts=0, dur=10, tid=7),
        dict(ph="X", cat="kernel", name="attn", ts=5, dur=10, tid=8),  # overlaps gemm on a second stream
        dict(ph="X", cat="gpu_memcpy", name="copy", ts=30, dur=5, tid=7),
        dict(ph="X", cat="cpu_op", name="aten::mm", ts=0, dur=1000),
    ]
    s = summarize_trace(_write(tmp_path / "x-DECODE.trace.json.gz", events), steps=2)
    assert s["busy_ms"] == pytest.approx((15 + 5) / 2 / 1000)  # [0, 15] and [30, 35], over 2 steps
    assert s["window_ms"] == pytest.approx(35 / 2 / 1000)
    assert s["kernels_ms"] == pytest.approx(20 / 2 / 1000)  # concurrent kernels each count
    assert s["streams"] == 2
    assert s["kernels_per_step"] == 1.0
    assert [name for name, _ in s["top"]] == ["gemm", "attn"]


def test_a_trace_without_gpu_activity_is_refused_with_the_reason(tmp_path):
    path = _write(tmp_path / "y-DECODE.trace.json.gz", [dict(ph="X", cat="cpu_op", name="a", ts=0, dur=1)])
    with pytest.raises(ValueError, match="no GPU events"):
        summarize_trace(path, steps=1)


def test_bench_rollout_from_the_cli_names_the_sglang_environment_when_sglang_is_missing(monkeypatch):
    import importlib.util

    from megatron_rlvr import bench as cli_bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sglang" else real(name, *a))
    with pytest.raises(SystemExit, match="setup_sglang_env.sh"):
        cli_bench.main(["rollout", "--batch", "1"])
