"""Warm-start stage: a short supervised phase so RLVR starts from a policy with several modes (the paper's
premise: RLVR sharpens what pre-training/SFT put there).

The policy learns a skewed mix of correct answers (and some incorrect ones) from the task; the memory model learns
the same data, so at step 0 it approximates the policy's own sampling distribution. The result is cached under
`warm_start.cache_dir/<hash of everything it depends on>` so reruns skip it; a per-key file lock lets runs that
share a cold cache (a sweep started at once) train it once and wait for each other.

A quality gate follows: each model's loss on held-out examples must be at most `warm_start.max_loss`. Adam at a
constant 3e-3 left about one initialisation in four stuck at ~2.7x the converged loss, and RL from such a start
learned nothing without any sign in the run; the schedule now in the defaults (1e-3, warm-up, cosine decay) was
chosen by measuring seeds 0-7 on CPU and GPU (BENCHMARKS.md), and the gate stops any start that still fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist

from megatron_rlvr.config import OptimConfig, RunConfig
from megatron_rlvr.rollout.types import Generation, pack_generations
from megatron_rlvr.update import cross_entropy_step

CACHE_VERSION = 3  # 2: lr schedule, held-out loss and quality gate; 3: the task's own section only
EVAL_SEED_OFFSET = 7_777_777  # held-out examples come from their own stream, never the training one


class WarmStartError(RuntimeError):
    """The warm start did not reach the quality gate; the message names the numbers and the fix."""


def cache_key(cfg: RunConfig) -> str:
    w = asdict(cfg.warm_start)
    w.pop("cache_dir")
    t = cfg.task
    parts = {
        # the task that runs and its own section: another task's settings (or a new task's section) do not change
        # the warm start
        "v": CACHE_VERSION, "warm_start": w, "task": {"name": t.name, "seed": t.seed, "section": asdict(t.section())},
        "seed": cfg.seed,
        "policy": [cfg.policy.preset, cfg.policy.init_seed, cfg.policy.dtype, cfg.policy.init_device],
        # The memory model is always warm-started (cheap beside the policy), so runs with and without DLC share
        # one cached start and differ only in what RL does.
        "memory": [cfg.memory.preset, cfg.memory.init_seed, cfg.memory.dtype, cfg.memory.init_device],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def warm_start_optim(cfg: RunConfig) -> OptimConfig:
    """The warm start's own optimizer (RL starts with fresh optimizer state)."""
    ws = cfg.warm_start
    warmup = min(ws.warmup_steps, ws.steps // 10)  # short warm starts (tests) keep most of their steps at peak
    return OptimConfig(optimizer="adam", lr=ws.lr, clip_grad=1.0, lr_warmup_steps=warmup,
                       lr_decay_style=ws.lr_decay, lr_decay_steps=ws.steps if ws.lr_decay != "constant" else 0,
                       min_lr_ratio=ws.min_lr_ratio)


def _examples_batch(task, n: int, fraction: float, rng: random.Random):
    pairs = task.warm_start_examples(n, fraction, rng)
    gens = [Generation(list(p), list(r), [0.0] * len(r), [0.0] * len(r), "stop") for p, r in pairs]
    b = pack_generations(gens, [0.0] * len(gens), list(range(len(gens))), task.tokenizer.pad_id)
    return b.tokens, b.response_mask


def held_out_loss(model, task, cfg: RunConfig, micro_batch_size: int) -> float:
    """Mean NLL per response token on `warm_start.eval_examples` examples drawn apart from the training ones."""
    ws = cfg.warm_start
    tokens, mask = _examples_batch(task, ws.eval_examples, ws.incorrect_fraction,
                                   random.Random(cfg.seed * 97 + 13 + EVAL_SEED_OFFSET))
    logprobs, _ = model.forward_logprobs(tokens, temperature=1.0, micro_batch_size=micro_batch_size)
    return float(-logprobs.float()[mask].sum() / mask.sum())


def loss_bound(cfg: RunConfig, task) -> Optional[float]:
    """The gate's bound: `warm_start.max_loss`, else the task's own `warm_start_max_loss` (None: no gate)."""
    if not cfg.warm_start.gate:
        return None
    ws = cfg.warm_start
    return ws.max_loss if ws.max_loss is not None else getattr(task, "warm_start_max_loss", None)


def check_quality(losses: dict[str, float], limit: Optional[float], cfg: RunConfig, where: Path) -> None:
    """Stop the run when a warm-started model's held-out loss is above `limit` (see `loss_bound`)."""
    bad = {k: v for k, v in losses.items() if limit is not None and v > limit}
    if not bad:
        return
    worst = ", ".join(f"the {k}'s held-out loss is {v:.3f} nats per token" for k, v in bad.items())
    seeds = ", ".join(f"{k}.init_seed={getattr(cfg, k).init_seed}" for k in bad)
    raise WarmStartError(
        f"warm start did not converge: {worst}, above the bound {limit:g} (warm_start.max_loss; converged starts "
        f"of the built-in task reach 0.47-0.64); RL from this start would learn nothing ({seeds}; {where}). Fix: raise "
        "warm_start.steps or lower warm_start.lr, or draw another initialisation (policy.init_seed / "
        "memory.init_seed); warm_start.gate=false skips this check")


@contextlib.contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """An exclusive lock per cache key: the first run trains, the others wait and then read its result."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_done(root: Path) -> Optional[dict]:
    done = root / "DONE"
    if not done.is_file():
        return None
    try:
        return json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record: train again


def ensure_warm_start(cfg: RunConfig, task, build_model: Callable,
                      log: Callable[[str], None] = print) -> Optional[Path]:
    """Return the folder holding warm-started `policy/` (and `memory/`) checkpoints, training them if not cached.

    `build_model(name, optim_cfg)` builds a fresh TrainableModel; the warm start uses its own optimizer, so RL
    starts with fresh optimizer state. Raises WarmStartError when a model misses the quality gate.
    """
    ws = cfg.warm_start
    if not ws.enabled or ws.steps == 0 or cfg.policy.init_from is not None:
        return None
    root = Path(ws.cache_dir).expanduser() / cache_key(cfg)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    lock = _cache_lock(root) if rank0 else contextlib.nullcontext()
    with lock:
        done = _read_done(root)
        if done is not None:
            log(f"warm start: cached at {root}")
            check_quality(done.get("held_out_loss", {}), loss_bound(cfg, task), cfg, root)
            return root
        # Every rank decides alike: rank 0 found no cache (the others wait for its answer inside the lock).
        if dist.is_initialized():
            dist.barrier()
        _train(cfg, task, build_model, root, rank0, log)
    if dist.is_initialized():
        dist.barrier()
    return root


def _train(cfg: RunConfig, task, build_model: Callable, root: Path, rank0: bool, log: Callable[[str], None]) -> None:
    ws = cfg.warm_start
    names = ["policy", "memory"]
    log(f"warm start: {ws.steps} supervised steps for {', '.join(names)} (cached afterwards in {root})")
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    optim = warm_start_optim(cfg)
    mbs = max(cfg.algorithm.micro_batch_size, ws.batch_size)
    losses, held_out = {}, {}
    for name in names:
        model = build_model(name, optim)
        rng = random.Random(cfg.seed * 97 + 13)  # same data for both models
        for _ in range(ws.steps):
            tokens, mask = _examples_batch(task, ws.batch_size, ws.incorrect_fraction, rng)
            loss, _ = cross_entropy_step(model, tokens, mask, mbs)
        losses[name] = loss
        held_out[name] = held_out_loss(model, task, cfg, mbs)
        model.save_checkpoint(tmp / name)
        del model
    log("warm start: held-out loss " + ", ".join(f"{k} {v:.3f}" for k, v in held_out.items())
        + " (last batch " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()) + ")")
    try:
        check_quality(held_out, loss_bound(cfg, task), cfg, root)
    except WarmStartError:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)  # never cache a start that failed the gate
        raise
    if rank0:
        (tmp / "DONE").write_text(json.dumps({"final_loss": losses, "held_out_loss": held_out}) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
