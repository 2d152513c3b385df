"""`megatron-rlvr bench train`: time one RL step per phase, and the policy update next to a plain LM step.

Random weights (Qwen3-1.7B-shaped policy, Qwen3-0.6B-shaped memory by default), bf16 on one GPU. The plain
baseline is a Megatron-Core language-model training step of the same model (same DDP wrapper, optimizer and
micro-batches, Megatron's own fused vocab-parallel cross-entropy via `labels=`) over the same token tensor, so the
ratio isolates what the RL update adds (log-prob gathering, PPO loss, entropy). Prints a table, writes CSV, and
ends with one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t0


def plain_lm_step(model, tokens: torch.Tensor, micro_batch_size: int) -> float:
    """One optimizer step of next-token cross-entropy through Megatron's own output-layer loss (`labels=`)."""
    mbs = [{"tokens": t} for t in tokens.split(micro_batch_size)]
    n_tok = tokens[:, 1:].numel()
    scale = len(mbs) * max(model.layout.dp, 1)

    def step_fn(data_iterator, chunk):
        t = next(data_iterator)["tokens"].to(model.ctx.device)
        b, s = t.shape
        pos = torch.arange(s, device=t.device).unsqueeze(0).expand(b, s)
        labels = torch.roll(t, shifts=-1, dims=1)
        out = chunk(t, pos, None, labels=labels)  # (b, s) per-token CE from Megatron's fused loss

        def loss_func(per_token):
            loss = per_token[:, :-1].float().sum() / n_tok
            return loss * scale, {"loss": float(loss.detach())}

        return out, loss_func

    with model.ctx.layout(model.name):
        for c in model.ddp_chunks:
            c.zero_grad_buffer()
        model.optimizer.zero_grad()
        model._run_schedule(mbs, step_fn, forward_only=False)
        model.optimizer.step()
    return n_tok


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="megatron-rlvr bench train", description=__doc__.splitlines()[0])
    p.add_argument("--policy", default="qwen3-1.7b")
    p.add_argument("--memory", default="qwen3-0.6b")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed RL steps (after one warm-up step)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default="runs/bench_train")
    args = p.parse_args(argv)

    from megatron_rlvr import runtime
    from megatron_rlvr.advantage import assign_advantages
    from megatron_rlvr.config import load_config
    from megatron_rlvr.rollout.collect import collect_rollouts
    from megatron_rlvr.update import recompute_logprobs, update_memory, update_policy
    from megatron_rlvr.weight_sync import push_weights

    out = Path(args.out)
    cfg = load_config(overrides=[
        f"run_dir={out}", f"policy.preset={args.policy}", f"memory.preset={args.memory}",
        f"policy.dtype={args.dtype}", f"memory.dtype={args.dtype}", "warm_start.enabled=false",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"rollout.batch_size={args.prompts * args.group_size}",
        f"algorithm.micro_batch_size={args.micro_batch_size}", "checkpoint.load=none", "logging.tensorboard=false",
        "dlc.enabled=true", "dlc.lam=0.5", "optimizer.policy.lr=1e-6", "optimizer.memory.lr=1e-5",
    ])
    run = runtime.setup(cfg)
    runtime.build_models(run)
    runtime.build_engine(run)
    policy, memory = run.models["policy"], run.models["memory"]
    push_weights(run.transport, run.models)
    rows: dict[str, list[float]] = {}
    rl_tok_s, plain_tok_s = [], []
    for step in range(args.steps + 1):
        t = {}
        batch, t["rollout"] = _timed(lambda: collect_rollouts(run.engine, run.sampler, run.task, cfg, step, run.layout))
        _, t["advantage"] = _timed(lambda: assign_advantages(batch, cfg.algorithm))
        (old_lp, _), t["logprob_recompute"] = _timed(
            lambda: recompute_logprobs(policy, batch, cfg.rollout.temperature, args.micro_batch_size))
        _, t["policy_update"] = _timed(lambda: update_policy(policy, batch, old_lp, cfg, step))
        _, t["memory_update"] = _timed(lambda: update_memory(memory, batch, cfg))
        _, t["weight_push"] = _timed(lambda: push_weights(run.transport, run.models))
        n_tok, t_plain = _timed(lambda: plain_lm_step(policy, batch.tokens, args.micro_batch_size))
        if step == 0:
            continue  # warm-up: allocator, autotuning, first-touch
        for k, v in t.items():
            rows.setdefault(k, []).append(v)
        rl_tok_s.append(batch.tokens[:, 1:].numel() / t["policy_update"])
        plain_tok_s.append(n_tok / t_plain)
        tokens_shape = tuple(batch.tokens.shape)

    med = {k: statistics.median(v) for k, v in rows.items()}
    rl, plain = statistics.median(rl_tok_s), statistics.median(plain_tok_s)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\nRL step phases (median of {args.steps} steps), policy {args.policy} + memory {args.memory}, "
          f"{cfg.policy.dtype if cfg.policy.dtype != 'auto' else ('bf16' if torch.cuda.is_available() else 'fp32')}, "
          f"batch {tokens_shape} tokens, device {device}")
    print(f"{'phase':<20}{'seconds':>10}")
    for k, v in med.items():
        print(f"{k:<20}{v:>10.3f}")
    print(f"\n{'':<34}{'tokens/s':>12}")
    print(f"{'plain Megatron LM step':<34}{plain:>12.0f}")
    print(f"{'RL policy update (PPO)':<34}{rl:>12.0f}")
    print(f"{'ratio RL / plain':<34}{rl / plain:>12.3f}   (target >= 0.90)")
    print(f"{'weight push, both models (s)':<34}{med['weight_push']:>12.3f}   (target < 1 s)")
    out.mkdir(parents=True, exist_ok=True)
    record = {"device": device, "date": datetime.date.today().isoformat(), "commit": _git_commit(),
              "policy": args.policy, "memory": args.memory, "tokens": list(tokens_shape),
              **{f"time_{k}_s": round(v, 4) for k, v in med.items()},
              "plain_tokens_per_s": round(plain), "rl_update_tokens_per_s": round(rl),
              "rl_over_plain": round(rl / plain, 4)}
    with open(out / "bench_train.csv", "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(record))
        if f.tell() == 0:
            w.writeheader()
        w.writerow(record)
    print(json.dumps(record))
    if run.engine is not None:
        run.engine.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
