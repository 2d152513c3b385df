"""`megatron-rlvr bench train`: time whole RL steps per phase, side by side, on one GPU, with no user files.

Random weights (Qwen3-1.7B-shaped policy, Qwen3-0.6B-shaped memory by default), bf16, IAC + DLC, the built-in
task (its prompts and verifier; responses sampled beyond its small vocabulary simply score 0, which does not
change the work a step does). In one run, each configuration after one warm-up step (SGLang DLC on and off take
turns step by step, so that drift over the run does not fall on one of them):

    --engine sglang     SGLang DLC on | SGLang DLC off | SGLang policy only | embedded DLC on   (colocated SGLang,
                        memory released around the updates)
                        DLC off: lambda 0, no memory update or push, on the same DLC engine, which still decodes
                        its memory stack; policy only: what a run with dlc.enabled=false uses, SGLang serving the
                        policy alone (its own engine, timed after the two that take turns)
    --engine embedded   embedded DLC on, and the policy update next to a plain Megatron LM step of the same model

Phases: rollout, log-prob recompute, policy update, memory update, weight push, memory release/resume. Then
(SGLang) the weight push of an 8B policy + 1.7B memory into a colocated SGLang engine, through the same
transport the trainer uses (the tensors are random bf16 tensors already on the GPU: the push, not the gather,
is what that row measures). Prints tables with ratios, appends CSV rows, ends with one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
from pathlib import Path

import torch

from megatron_rlvr.bench.harness import device_name, emit, provenance, sync, time_host

PHASES = ("rollout", "logprob_recompute", "policy_update", "memory_update", "weight_push", "release_resume")


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
        model.run_schedule(mbs, step_fn, forward_only=False)
        model.optimizer.step()
    return n_tok


def _with(cfg, dotted: str, value):
    out = copy.deepcopy(cfg)
    *path, leaf = dotted.split(".")
    node = out
    for p in path:
        node = getattr(node, p)
    setattr(node, leaf, value)
    return out


def _use_engine(run, cfg, kind: str) -> None:
    """Swap the run's engine for a fresh one of `kind` (the previous one shut down first: one on the GPU), built for
    `cfg` (with dlc.enabled=false: the policy-only engine, which receives the policy alone)."""
    from megatron_rlvr.run import runtime
    from megatron_rlvr.weight_sync import push_weights

    if run.engine is not None:
        run.engine.shutdown()
        run.engine = run.transport = None
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    run.cfg = _with(cfg, "rollout.engine", kind)
    runtime.build_engine(run)
    push_weights(run.transport, run.models if cfg.dlc.enabled else {"policy": run.models["policy"]})


class ConfigTimer:
    """Phase times of one configuration's RL steps; `step()` runs and (unless a warm-up) records one step.

    Several timers over the same run can take turns step by step (`time_interleaved`), so that drift over the run
    (allocator growth, clocks, the engine's caches) falls on every configuration alike instead of on whichever was
    timed first: session 10's DLC-on column, timed first, was slower than DLC off even in phases that do the same
    work in both."""

    def __init__(self, run, dlc: bool):
        self.run = run
        # DLC off: sample from the policy alone (lambda 0), no memory update, only the policy pushed
        # (from the run's own config, which names its engine: a restart inside the view rebuilds that kind)
        self.view = run if dlc else dataclasses.replace(run, cfg=_with(run.cfg, "dlc.enabled", False),
                                                        models={"policy": run.models["policy"]})
        self.rows: dict[str, list[float]] = {}
        self.tok_s: list[float] = []
        self.batch_shape: list[int] = []

    def step(self, step: int, record: bool = True) -> None:
        from megatron_rlvr.run.metrics import PhaseTimer
        from megatron_rlvr.step import rl_step

        view = self.view
        if view is not self.run:  # the DLC-off view must use the run's engine (a restart may have replaced it)
            view.engine, view.transport, view.engine_restarts = (self.run.engine, self.run.transport,
                                                                 self.run.engine_restarts)
        timer = PhaseTimer(sync=sync)
        retries = _alloc_retries()
        _, batch = rl_step(view, step, timer)  # the trainer's step, phase by phase
        if view is not self.run:  # a restart inside the DLC-off view replaced its engine: the run must use it
            self.run.engine, self.run.transport, self.run.engine_restarts = (view.engine, view.transport,
                                                                             view.engine_restarts)
            memory = {k: m for k, m in self.run.models.items() if k != "policy"}
            if (memory and self.run.engine is not None and self.run.cfg.rollout.placement == "colocated"
                    and not getattr(self.run.engine, "policy_only", False)):
                # The view pushed only the policy after its update, but the colocated release dropped the engine's
                # memory weights too (SGLang keeps no copy): put them back, untimed, for the next DLC-on step.
                from megatron_rlvr.weight_sync import push_weights

                push_weights(self.run.transport, memory)
        self.batch_shape = list(batch.tokens.shape)
        if not record:
            return  # warm-up: allocator, autotuning, graph capture, first-touch
        t = {k: timer.times.get(k, 0.0) for k in PHASES}
        # cudaMalloc retries after freeing the cache: memory pressure next to the engine shows up here
        self.rows.setdefault("alloc_retries", []).append(_alloc_retries() - retries)
        t["step"] = sum(t.values())  # the phases only (alloc_retries is kept apart)
        for k, v in t.items():
            self.rows.setdefault(k, []).append(v)
        self.tok_s.append(float(batch.response_mask.sum()) / t["rollout"])

    def result(self) -> dict:
        """Median phase times, rollout tokens/s, the batch shape and the engine restarts so far."""
        med = {k: statistics.median(v) for k, v in self.rows.items()}
        med["rollout_tokens_per_s"] = statistics.median(self.tok_s)
        med["batch"] = self.batch_shape
        med["steps"] = len(self.tok_s)
        # An engine restarted at any point so far (warm-up included) may run with less memory from then on:
        # session 9's restarted SGLang engine started with 24 GB free instead of 80 GB, and its rollouts ran 3.5x
        # slower.
        med["engine_restarts"] = self.run.engine_restarts
        return med


def time_interleaved(timers: dict[str, ConfigTimer], steps: int, first_step: int, warmup: bool = True) -> dict:
    """Each timer's warm-up step, then `steps` rounds in which every timer runs one step in turn; the medians per
    timer. Returns the next unused step number under "next_step" beside the per-name results."""
    step = first_step
    if warmup:
        for t in timers.values():
            t.step(step, record=False)
            step += 1
    for _ in range(steps):
        for t in timers.values():
            t.step(step)
            step += 1
    return {"next_step": step, **{name: t.result() for name, t in timers.items()}}


def time_config(run, dlc: bool, steps: int, first_step: int, warmup: bool = True) -> dict:
    """Median phase times (and rollout tokens/s) of `steps` steps of one configuration of `run` (DLC off: a view
    of its config with dlc.enabled=false), after one warm-up step if `warmup`."""
    return time_interleaved({"only": ConfigTimer(run, dlc)}, steps, first_step, warmup)["only"]


def _alloc_retries() -> int:
    return torch.cuda.memory_stats().get("num_alloc_retries", 0) if torch.cuda.is_available() else 0


def push_bench(policy_preset: str, memory_preset: str, bucket_mb: int, repeats: int, mem_fraction: float,
               workdir: Path) -> dict:
    """Seconds to push both models (random bf16 tensors on this GPU) into a colocated SGLang DLC engine."""
    from megatron_rlvr.qwen3.names import hf_shapes
    from megatron_rlvr.qwen3.shapes import get_preset
    from megatron_rlvr.rollout.sglang import SGLangEngine, build_model_dir
    from megatron_rlvr.weight_sync import TensorBuckets

    shapes = {"policy": get_preset(policy_preset), "memory": get_preset(memory_preset)}
    path = build_model_dir(workdir / "push_model", shapes["policy"], shapes["memory"], dtype="bfloat16")
    engine = SGLangEngine(str(path), policy_shape=shapes["policy"], memory_shape=shapes["memory"],
                          sglang={"load_format": "dummy", "mem_fraction_static": mem_fraction,
                                  "log_level": "warning"})
    try:
        gen = torch.Generator(device="cuda").manual_seed(0)
        tensors = {m: [(n, torch.randn(s, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02)
                       for n, s in hf_shapes(shape).items()] for m, shape in shapes.items()}
        transport = TensorBuckets(engine, shapes, bucket_bytes=bucket_mb << 20)
        times, pushed = [], 0
        for i in range(repeats + 1):
            # as push_weights does: one prefix-cache flush, after the last model
            pushed, t = time_host(lambda: sum(transport.push(m, tensors[m], flush_cache=m == "memory")
                                              for m in ("policy", "memory")))
            if i:
                times.append(t)
        sec = statistics.median(times)
        return {"push_policy": policy_preset, "push_memory": memory_preset, "push_bytes": pushed,
                "push_s": round(sec, 4), "push_gb_per_s": round(pushed / sec / 1e9, 2)}
    finally:
        engine.shutdown()


def _print_table(title: str, results: dict[str, dict]) -> None:
    names = list(results)
    print(f"\n{title}")
    print(f"{'phase (s, median)':<24}" + "".join(f"{n:>22}" for n in names))
    for k in PHASES + ("step",):
        print(f"{k:<24}" + "".join(f"{results[n].get(k, 0.0):>22.3f}" for n in names))
    print(f"{'rollout tokens/s':<24}" + "".join(f"{results[n]['rollout_tokens_per_s']:>22.0f}" for n in names))
    print(f"{'allocator retries':<24}" + "".join(f"{results[n].get('alloc_retries', 0):>22.0f}" for n in names))
    print(f"{'timed steps':<24}" + "".join(f"{results[n].get('steps', 0):>22.0f}" for n in names))
    print(f"{'engine restarts so far':<24}" + "".join(f"{results[n].get('engine_restarts', 0):>22.0f}" for n in names))
    if any(results[n].get("engine_restarts", 0) for n in names):
        print("WARNING: a rollout engine was restarted (see the log above for why): the columns from that point on "
              "time a rebuilt engine, not the step; fix the cause and rerun before using these numbers")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="megatron-rlvr bench train", description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=("embedded", "sglang"), default="embedded",
                   help="sglang: SGLang DLC on / off and the embedded engine side by side, plus the 8B push")
    p.add_argument("--policy", default="qwen3-1.7b")
    p.add_argument("--memory", default="qwen3-0.6b")
    p.add_argument("--prompts", type=int, default=None, help="default 32 (sglang) / 8 (embedded)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 512 (sglang) / 256 (embedded)")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed RL steps per configuration (after one warm-up)")
    p.add_argument("--embedded-steps", type=int, default=1, help="timed steps of the embedded engine (--engine "
                   "sglang; it is the slow baseline)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--mem-fraction", type=float, default=0.3, help="SGLang mem_fraction_static when colocated")
    p.add_argument("--push-policy", default="qwen3-8b")
    p.add_argument("--push-memory", default="qwen3-1.7b")
    p.add_argument("--push-repeats", type=int, default=3)
    p.add_argument("--skip-push", action="store_true", help="--engine sglang: skip the 8B + 1.7B push row")
    p.add_argument("--sglang-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra sglang.Engine argument (YAML value), e.g. sleep_on_idle=false; repeatable")
    p.add_argument("--memory-max-tokens", type=int, default=0,
                   help="algorithm.memory_max_tokens_per_micro_batch: the memory update's own token budget")
    p.add_argument("--skip-embedded", action="store_true",
                   help="--engine sglang: leave out the embedded-engine column (its rollout is the slow baseline)")
    p.add_argument("--skip-policy-only", action="store_true",
                   help="--engine sglang: leave out the column of a DLC-off run's own engine (SGLang serving the "
                        "policy alone; one more engine start)")
    p.add_argument("--out", default="runs/bench_train")
    from megatron_rlvr.bench import packing as bench_packing

    bench_packing.add_arguments(p)
    args = p.parse_args(argv)
    if args.response_lengths:  # the update stage at ragged lengths: padded vs packed vs plain (bench/packing.py)
        args.prompts = args.prompts or 8
        args.max_new_tokens = args.max_new_tokens or 256
        return bench_packing.run(args)
    sglang = args.engine == "sglang"
    prompts = args.prompts or (32 if sglang else 8)
    new_tokens = args.max_new_tokens or (512 if sglang else 256)

    from megatron_rlvr.run import runtime
    from megatron_rlvr.config import load_config

    out = Path(args.out)
    bad = [kv for kv in args.sglang_arg if "=" not in kv or not kv.split("=", 1)[0].strip()]
    if bad:
        p.error(f"--sglang-arg {bad[0]!r}: expected KEY=VALUE, e.g. --sglang-arg sleep_on_idle=false")
    sglang_extra = "".join(f", {kv.split('=', 1)[0]}: {kv.split('=', 1)[1]}" for kv in args.sglang_arg)
    cfg = load_config(overrides=[
        f"run_dir={out}", f"policy.preset={args.policy}", f"memory.preset={args.memory}",
        f"policy.dtype={args.dtype}", f"memory.dtype={args.dtype}", "warm_start.enabled=false",
        f"rollout.prompts_per_step={prompts}", f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={new_tokens}", f"rollout.batch_size={prompts * args.group_size}",
        f"algorithm.micro_batch_size={args.micro_batch_size}",
        f"algorithm.memory_max_tokens_per_micro_batch={args.memory_max_tokens}", "checkpoint.load=none",
        "logging.tensorboard=false",
        "dlc.enabled=true", "dlc.lam=0.5", "optimizer.policy.lr=1e-6", "optimizer.memory.lr=1e-5",
        "rollout.placement=colocated", "checks.logprob_gap=warn",  # random weights: report the gap, do not stop
        f"rollout.sglang={{mem_fraction_static: {args.mem_fraction}, log_level: warning{sglang_extra}}}",
    ])
    run = runtime.setup(cfg)
    runtime.build_models(run)
    device = device_name()
    results: dict[str, dict] = {}
    step = 0
    if sglang:
        _use_engine(run, cfg, "sglang")
        # DLC on and off take turns step by step on the same engine (one warm-up each first)
        timed = time_interleaved({"sglang DLC on": ConfigTimer(run, True),
                                  "sglang DLC off": ConfigTimer(run, False)}, args.steps, step)
        step = timed.pop("next_step")
        results.update(timed)
        _print_table("so far (the columns that follow need their own engines)", results)  # kept if a later one dies
        if not args.skip_policy_only:
            # What a run with dlc.enabled=false uses: SGLang serving the policy alone (no memory stack)
            off = _with(cfg, "dlc.enabled", False)
            _use_engine(run, off, "sglang")
            results["sglang policy only"] = time_config(run, False, args.steps, step)
            step += args.steps + 1
            _print_table("so far", results)
    if not (sglang and args.skip_embedded):
        _use_engine(run, cfg, "embedded")
        # Next to SGLang the embedded engine is the slow baseline (tens of seconds per rollout): no warm-up step,
        # whose one-off costs are small against that.
        results["embedded DLC on"] = (time_config(run, True, args.embedded_steps, step, warmup=False)
                                      if sglang else time_config(run, True, args.steps, step))
    batch_shape = next(iter(results.values()))["batch"]
    head = (f"policy {args.policy} + memory {args.memory}, {prompts} prompts x {args.group_size} x {new_tokens} "
            f"new tokens, IAC + DLC (lambda 0.5), batch {tuple(batch_shape)} tokens, device {device}")
    _print_table(f"RL step phases, {head}", results)
    record = {**provenance(), "engine": args.engine, "policy": args.policy, "memory": args.memory,
              "tokens": batch_shape}
    for name, r in results.items():
        key = name.replace(" ", "_").lower()
        record.update({f"{key}_{k}_s": round(r[k], 4) for k in PHASES + ("step",)})
        record[f"{key}_engine_restarts"] = r.get("engine_restarts", 0)
        record[f"{key}_rollout_tokens_per_s"] = round(r["rollout_tokens_per_s"])
    if sglang:
        on, off, emb = results["sglang DLC on"], results["sglang DLC off"], results.get("embedded DLC on")
        ratios = {"dlc_on_over_off_step": on["step"] / off["step"]}
        if emb is not None:
            ratios["rollout_speedup_vs_embedded"] = emb["rollout"] / on["rollout"]
            print(f"\n{'rollout: embedded / SGLang (DLC on)':<44}{ratios['rollout_speedup_vs_embedded']:>10.2f}x"
                  "   (target >= 10x)")
        invalid = "   INVALID: an engine was restarted" if off.get("engine_restarts", 0) else ""
        print(f"{'step: DLC on / DLC off (SGLang)':<44}{ratios['dlc_on_over_off_step']:>10.3f}x   (target <= 1.3x)"
              + invalid)
        print("  DLC off = lambda 0, no memory update or push, on the same DLC engine, which still decodes its memory "
              "stack")
        solo = results.get("sglang policy only")
        if solo is not None:
            ratios["dlc_on_over_policy_only_step"] = on["step"] / solo["step"]
            ratios["dlc_on_over_policy_only_rollout"] = on["rollout"] / solo["rollout"]
            print(f"{'step: DLC on / policy-only SGLang':<44}{ratios['dlc_on_over_policy_only_step']:>10.3f}x   "
                  "(what DLC costs a run against dlc.enabled=false)")
            print(f"{'rollout: DLC on / policy-only SGLang':<44}{ratios['dlc_on_over_policy_only_rollout']:>10.3f}x")
        record.update({k: round(v, 4) for k, v in ratios.items()})
        run.engine.shutdown()
        run.engine = run.transport = None
        if not args.skip_push:
            # The trained models are not needed for this row: free their GPU memory for the 8B engine and tensors.
            import gc

            run.models.clear()
            gc.collect()
            torch.cuda.empty_cache()
            push = push_bench(args.push_policy, args.push_memory, cfg.rollout.weight_bucket_mb, args.push_repeats,
                              0.4, out)
            print(f"{'weight push ' + args.push_policy + ' + ' + args.push_memory + ' (s)':<44}{push['push_s']:>10.3f}"
                  f"    ({push['push_bytes'] / 1e9:.1f} GB at {push['push_gb_per_s']} GB/s; target <= 1.5 s)")
            record.update(push)
    else:
        # The update next to a plain Megatron LM step over the same tokens isolates what the RL loss adds.
        policy = run.models["policy"]
        batch = torch.randint(0, policy.shape.vocab_size, tuple(batch_shape))
        plain_tok_s = []
        for i in range(args.steps + 1):
            n_tok, t_plain = time_host(lambda: plain_lm_step(policy, batch, args.micro_batch_size))
            if i:
                plain_tok_s.append(n_tok / t_plain)
        plain = statistics.median(plain_tok_s)
        rl = batch[:, 1:].numel() / results["embedded DLC on"]["policy_update"]
        print(f"\n{'':<34}{'tokens/s':>12}")
        print(f"{'plain Megatron LM step':<34}{plain:>12.0f}")
        print(f"{'RL policy update (PPO)':<34}{rl:>12.0f}")
        print(f"{'ratio RL / plain':<34}{rl / plain:>12.3f}   (target >= 0.90)")
        record.update({"plain_tokens_per_s": round(plain), "rl_update_tokens_per_s": round(rl),
                       "rl_over_plain": round(rl / plain, 4)})
    if run.engine is not None:
        run.engine.shutdown()
    emit(record, out / f"bench_train_{args.engine}.csv")  # the last stdout line
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
