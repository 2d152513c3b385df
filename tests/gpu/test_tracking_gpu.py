"""The same seed gives the same model on CPU and GPU, and the GPU run tracks the CPU run from it.

- Initial weights: `init_device=cpu` (the default) draws them with the CPU generator on every device, so a CUDA
  run starts from the CPU run's exact weights; `init_device=device` (the fast path for large models) is a
  different draw.
- A few warm-start optimizer steps in float32 (TF32 off) on CUDA equal the CPU's to float32 rounding.
- The tiny default (warm start + RL steps, float32) on CUDA tracks the CPU run within a stated tolerance: the
  warm-start held-out loss within 0.02 nats, the mean rollout reward of the first steps within 0.1, and the
  step-0 trainer/engine log-prob gap below the float32 tolerance.
The CPU side runs on the same machine with CUDA hidden.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.dist import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compares it with this CPU)"),
]
ROOT = Path(__file__).resolve().parents[2]
CPU_ENV = {"CUDA_VISIBLE_DEVICES": ""}


def build_worker(init_device: str, steps: int) -> dict:
    """The tiny policy's initial weights (HF names) and, after `steps` warm-start steps, its losses and weights."""
    import random

    from megatron_rlvr.config import ModelConfig, load_config
    from megatron_rlvr.qwen3.live import export_hf_tensors
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.tasks import build_task
    from megatron_rlvr.update import cross_entropy_step
    from megatron_rlvr.run.warm_start import _examples_batch, warm_start_optim

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = load_config()
    ctx = init_distributed(cfg)
    mcfg = ModelConfig(preset="tiny", dtype="float32", init_device=init_device)
    model = TrainableModel("policy", mcfg, warm_start_optim(cfg), ctx)
    with ctx.layout("policy"):
        init = {k: v.detach().cpu().clone() for k, v in export_hf_tensors(model.model_chunks, model.shape)}
    task, rng, losses = build_task(cfg.task), random.Random(13), []
    for _ in range(steps):
        tokens, mask = _examples_batch(task, 64, 0.3, rng)
        losses.append(cross_entropy_step(model, tokens, mask, 64)[0])
    with ctx.layout("policy"):
        final = {k: v.detach().cpu().clone() for k, v in export_hf_tensors(model.model_chunks, model.shape)}
    out = {"device": str(ctx.device), "init": init, "losses": losses, "final": final}
    ctx.destroy()
    return out


def test_the_same_seed_gives_the_same_initial_weights_on_cpu_and_gpu():
    cpu = run_distributed(build_worker, 1, args=("cpu", 0), env=CPU_ENV, timeout=300)[0]
    gpu = run_distributed(build_worker, 1, args=("cpu", 0), timeout=300)[0]
    fast = run_distributed(build_worker, 1, args=("device", 0), timeout=300)[0]
    assert cpu["device"] == "cpu" and gpu["device"].startswith("cuda")
    assert cpu["init"].keys() == gpu["init"].keys()
    for k in cpu["init"]:
        assert torch.equal(cpu["init"][k], gpu["init"][k]), k
    # The fast path draws on the GPU: a different model (and the reason the default is cpu).
    assert any(not torch.equal(cpu["init"][k], fast["init"][k]) for k in cpu["init"] if "norm" not in k)


def test_float32_warm_start_steps_on_cuda_equal_the_cpus():
    cpu = run_distributed(build_worker, 1, args=("cpu", 3), env=CPU_ENV, timeout=300)[0]
    gpu = run_distributed(build_worker, 1, args=("cpu", 3), timeout=300)[0]
    print("losses cpu", cpu["losses"], "gpu", gpu["losses"])
    for a, b in zip(cpu["losses"], gpu["losses"]):
        assert abs(a - b) <= 1e-5 * abs(a), (cpu["losses"], gpu["losses"])
    worst = max(float((cpu["final"][k] - gpu["final"][k]).abs().max()) for k in cpu["final"])
    print("max weight difference after 3 steps", worst)
    assert worst <= 1e-5


def _train(run_dir: Path, env: dict, dtype: str = "float32", extra: tuple = ()) -> str:
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", "steps=5",
           f"warm_start.cache_dir={run_dir}_ws", f"policy.dtype={dtype}", f"memory.dtype={dtype}", *extra,
           "logging.progress=false", "logging.tensorboard=false", "logging.plots=false", "eval.interval=0",
           "checkpoint.export_hf=false", "checkpoint.save_interval=0"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "8", **env})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def _summary(logs: dict, root: Path) -> tuple[dict, dict, dict]:
    """Held-out warm-start losses (policy, memory), mean reward and the metric rows of each named run."""
    loss = {n: [float(x) for x in re.search(r"held-out loss policy ([0-9.]+), memory ([0-9.]+)", s).groups()]
            for n, s in logs.items()}
    rows = {n: [json.loads(x) for x in (root / n / "metrics.jsonl").read_text().splitlines()] for n in logs}
    reward = {n: sum(r["reward/mean"] for r in rs) / len(rs) for n, rs in rows.items()}
    return loss, reward, rows


def test_the_tiny_default__on_cuda_tracks_the_cpu_run_from_the_same_weights(tmp_path):
    logs = {name: _train(tmp_path / name, env) for name, env in (("cpu", CPU_ENV), ("gpu", {}))}
    loss, reward, rows = _summary(logs, tmp_path)
    print("held-out loss", loss, "mean reward", reward,
          "step-0 gap", {n: rs[0]["rollout/logprob_abs_diff"] for n, rs in rows.items()})
    for a, b in zip(loss["cpu"], loss["gpu"]):
        assert abs(a - b) <= 0.02
    assert abs(reward["cpu"] - reward["gpu"]) <= 0.1
    assert rows["gpu"][0]["rollout/logprob_abs_diff"] <= 1e-3


def test_the_fused_log_prob_kernels_train_the_tiny_default_like_the_chunked_path(tmp_path):
    """`logprob_impl=triton` (kernels/token_stats_kernel.py) in every token-stats call of a bf16 GPU run: warm start
    (cross-entropy), log-prob recompute, policy and memory updates. It must learn like the chunked PyTorch path from
    the same weights, before it can become the CUDA default."""
    fused = ("policy.logprob_impl=triton", "memory.logprob_impl=triton")
    logs = {name: _train(tmp_path / name, {}, "bfloat16", extra) for name, extra in (("torch", ()), ("triton", fused))}
    loss, reward, rows = _summary(logs, tmp_path)
    print("bf16 GPU, held-out loss", loss, "mean reward", reward, "step-0 gap",
          {n: rs[0]["rollout/logprob_abs_diff"] for n, rs in rows.items()}, "step-0 PPO KL",
          {n: rs[0]["policy/ppo_kl_before_update"] for n, rs in rows.items()})
    for a, b in zip(loss["torch"], loss["triton"]):
        assert abs(a - b) <= 0.02
    assert abs(reward["torch"] - reward["triton"]) <= 0.1
    for n in logs:
        assert rows[n][0]["policy/ppo_kl_before_update"] < 1e-3
        assert rows[n][0]["rollout/logprob_abs_diff"] < 0.05  # bf16 trainer vs bf16 engine, as tests/gpu/test_loop_gpu
