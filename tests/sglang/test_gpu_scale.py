"""GPU checks of the scale-out paths (run on the device after `tools/gpu_sglang.sh install`):

    python -m pytest -q -p no:cacheprovider tests/sglang/test_gpu_scale.py -rs

1. The tiny default for 20 steps with a colocated SGLang engine (bf16, triton attention, memory released around
   every update, weights pushed through the tensor transport's CUDA-IPC buckets): the trainer's recomputed
   log-probs agree with the engine's at every step, and step 0's PPO KL is ~0.
2. (2 GPUs) A dedicated server on GPU 1 and the trainer on GPU 0: weights travel over the NCCL weight-sync group
   (`weight_sync.Broadcast`), and the server's log-probs again agree with Megatron's.

Metrics go to $OUT (the device tool's output folder) when it is set, so the lead can put them in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# bf16 engine vs bf16 Megatron on the same weights: kernels differ (SGLang's triton attention vs Megatron's), so
# log-probs agree to bf16 rounding, not exactly; a wrong or stale weight push gives differences of order 1.
BF16_LOGPROB_TOL = 0.05

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _train(run_dir: Path, *overrides: str, env=None) -> list[dict]:
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", "rollout.engine=sglang",
           "logging.progress=false", "logging.tensorboard=false", "checkpoint.export_hf=false",
           f"warm_start.cache_dir={run_dir.parent / 'ws'}", *overrides]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env or dict(os.environ))
    out = os.environ.get("OUT")
    if out:
        dest = Path(out) / run_dir.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "train.log").write_text(res.stdout + res.stderr)
        if (run_dir / "metrics.jsonl").is_file():
            shutil.copy(run_dir / "metrics.jsonl", dest / "metrics.jsonl")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_tiny_default_runs_20_colocated_sglang_steps_and_trainer_agrees_with_the_engine(tmp_path):
    rows = _train(tmp_path / "run", "steps=20", "checkpoint.save_interval=0")
    assert [r["step"] for r in rows] == list(range(20))
    assert rows[0]["policy/ppo_kl_before_update"] < 1e-3
    worst = max(r["rollout/logprob_abs_diff"] for r in rows)
    assert worst < BF16_LOGPROB_TOL, worst  # the pushed weights reached the engine after every release/resume
    assert all(r["sync/bytes"] > 0 and r["rollout/engines"] == 1 for r in rows)
    print(f"\n20 colocated SGLang steps: reward {rows[0]['reward/mean']:.3f} -> {rows[-1]['reward/mean']:.3f}, "
          f"max |log-prob diff| {worst:.4f}, median s/step "
          f"{sorted(r['time/step'] for r in rows)[10]:.3f}")
    phases = sorted(k for k in rows[0] if k.startswith("time/") and k != "time/step")
    print("median s per phase: " + ", ".join(f"{k[5:]} {sorted(r.get(k, 0.0) for r in rows)[10]:.3f}" for k in phases))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multigpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL cannot put two ranks on one GPU)")
def test_a_dedicated_server_on_another_gpu_receives_the_weights_over_nccl(tmp_path):
    import requests
    import yaml

    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "srv"), "rollout": {
        "engine": "sglang", "placement": "dedicated",
        "sglang": {"tp_size": 1, "mem_fraction_static": 0.3, "attention_backend": "triton", "log_level": "warning"}}}))
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "megatron_rlvr.rollout.server", str(cfg), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES="1"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(2)
        rows = _train(tmp_path / "run", "steps=3", "rollout.placement=dedicated", f"rollout.server_urls=[{url}]",
                      "eval.interval=0", env=dict(os.environ, CUDA_VISIBLE_DEVICES="0", MASTER_ADDR="127.0.0.1"))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert max(r["rollout/logprob_abs_diff"] for r in rows) < BF16_LOGPROB_TOL
    assert rows[-1]["sync/bytes"] > 0
