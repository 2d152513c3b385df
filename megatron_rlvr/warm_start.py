"""Warm-start stage: a short supervised phase so RLVR starts from a policy with several modes (the paper's
premise: RLVR sharpens what pre-training/SFT put there).

The policy learns a skewed mix of correct answers (and some incorrect ones) from the task; the memory model learns
the same data, so at step 0 it approximates the policy's own sampling distribution. The result is cached under
`warm_start.cache_dir/<hash of everything it depends on>` so reruns skip it.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from megatron_rlvr.config import OptimConfig, RunConfig
from megatron_rlvr.rollout.types import Generation, pack_generations
from megatron_rlvr.update import cross_entropy_step

CACHE_VERSION = 1


def cache_key(cfg: RunConfig) -> str:
    w = asdict(cfg.warm_start)
    w.pop("cache_dir")
    parts = {
        "v": CACHE_VERSION, "warm_start": w, "task": asdict(cfg.task), "seed": cfg.seed,
        "policy": [cfg.policy.preset, cfg.policy.init_seed, cfg.policy.dtype],
        # The memory model is always warm-started (cheap beside the policy), so runs with and without DLC share
        # one cached start and differ only in what RL does.
        "memory": [cfg.memory.preset, cfg.memory.init_seed, cfg.memory.dtype],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _examples_batch(task, n: int, fraction: float, rng: random.Random):
    pairs = task.warm_start_examples(n, fraction, rng)
    gens = [Generation(list(p), list(r), [0.0] * len(r), [0.0] * len(r), "stop") for p, r in pairs]
    b = pack_generations(gens, [0.0] * len(gens), list(range(len(gens))), task.tokenizer.pad_id)
    return b.tokens, b.response_mask


def ensure_warm_start(cfg: RunConfig, task, build_model: Callable, log: Callable[[str], None] = print) -> Optional[Path]:
    """Return the folder holding warm-started `policy/` (and `memory/`) checkpoints, training them if not cached.

    `build_model(name, optim_cfg)` builds a fresh TrainableModel; the warm start uses its own optimizer, so RL
    starts with fresh optimizer state.
    """
    ws = cfg.warm_start
    if not ws.enabled or ws.steps == 0 or cfg.policy.init_from is not None:
        return None
    root = Path(ws.cache_dir).expanduser() / cache_key(cfg)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if (root / "DONE").is_file():
        log(f"warm start: cached at {root}")
        return root
    names = ["policy", "memory"]
    log(f"warm start: {ws.steps} supervised steps for {', '.join(names)} (cached afterwards in {root})")
    tmp = root.with_name(root.name + ".tmp")
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    optim = OptimConfig(optimizer="adam", lr=ws.lr, clip_grad=1.0, lr_warmup_steps=min(10, ws.steps // 10))
    losses = {}
    for name in names:
        model = build_model(name, optim)
        rng = random.Random(cfg.seed * 97 + 13)  # same data for both models
        for _ in range(ws.steps):
            tokens, mask = _examples_batch(task, ws.batch_size, ws.incorrect_fraction, rng)
            loss, _ = cross_entropy_step(model, tokens, mask, max(cfg.algorithm.micro_batch_size, ws.batch_size))
        losses[name] = loss
        model.save_checkpoint(tmp / name)
        del model
    if rank0:
        (tmp / "DONE").write_text(json.dumps({"final_loss": losses}) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    if dist.is_initialized():
        dist.barrier()
    log("warm start: final loss " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    return root
