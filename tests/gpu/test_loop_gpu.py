"""The tiny RLVR loop on one GPU: Megatron on CUDA (bf16), the embedded engine sampling with the Triton DLC kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine; "
                       "see tests/gpu/README.md)"),
]
ROOT = Path(__file__).resolve().parents[2]


def test_tiny_iac_dlc_loop_trains_on_one_gpu_with_the_triton_sampler(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", "steps=6",
           f"warm_start.cache_dir={tmp_path / 'ws'}", "warm_start.steps=150",
           # A short warm start for speed: it stops above the quality gate's loss bound (the gate raised here, and
           # these tests failed on the H200), and this test checks the GPU loop's mechanics, not learning
           # (test_tracking_gpu.py checks learning against the CPU run).
           "warm_start.gate=false", "logging.progress=false",
           "logging.tensorboard=false", "eval.interval=3", "checkpoint.save_interval=3"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    assert rows[0]["policy/ppo_kl_before_update"] < 1e-3
    # bf16 Megatron vs bf16 transformers: the same weights, so log-probs agree to bf16 precision.
    assert rows[0]["rollout/logprob_abs_diff"] < 0.05
    assert all(r["memory/loss"] > 0 for r in rows)
    assert (run_dir / "hf" / "policy" / "config.json").is_file()


def test_embedded_engine_on_cuda_samples_through_the_triton_kernel(monkeypatch):
    import megatron_rlvr.kernels as K
    from megatron_rlvr.qwen3.shapes import get_preset
    from megatron_rlvr.rollout.embedded import EmbeddedEngine
    from megatron_rlvr.rollout.types import SamplingParams

    calls = []
    real = K.dlc_sample

    def spy(policy_logits, *args, **kwargs):
        calls.append(policy_logits.device.type)
        return real(policy_logits, *args, **kwargs)

    monkeypatch.setattr(K, "dlc_sample", spy)
    engine = EmbeddedEngine(get_preset("tiny"), get_preset("tiny-mem"), device="cuda", dtype=torch.bfloat16,
                            batch_size=64)
    gens = engine.generate([[1, 65, 66, 58]] * 8, SamplingParams(max_new_tokens=6, lam=0.5, seed=3))
    assert len(gens) == 8 and all(len(g.response_ids) >= 1 for g in gens)
    assert calls and set(calls) == {"cuda"}
