"""`megatron-rlvr bench train --response-lengths ...`: the update stage at realistic, ragged response lengths.

Synthetic rollouts (random tokens, random weights) whose response lengths follow a distribution such as
``lognormal:median=1024,max=4096`` (median 1k tokens, clipped at 4k: long reasoning responses of very different
lengths). For each variant, the three training phases of an RL step (policy log-prob recompute with entropy,
policy PPO update, memory cross-entropy update) are timed, median of ``--steps`` after one warm-up step, with the
peak GPU memory of each phase; the variants take turns within every step:

* ``padded``: right-padded rows of prompt + max length, ``--micro-batch-size`` rows per micro-batch (what the
  trainer did before packing);
* ``packed``: THD packing with token-budget micro-batches of ``--max-tokens`` real tokens;
* ``plain packed LM step``: a plain Megatron-Core language-model training step of the policy on the very same
  packed micro-batches (Megatron's own vocab-parallel cross-entropy via ``labels=``): the baseline the packed RL
  update is compared with.

Throughput counts real tokens only (prompt + response, no padding) in every row. Prints the table, the ratios and
their targets, appends a CSV row and ends with one JSON line.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Callable

import torch


def parse_length_spec(spec: str) -> tuple[str, dict[str, float]]:
    """"lognormal:median=1024,max=4096[,sigma=0.8]" | "uniform:min=64,max=4096" | "fixed:len=256" -> (kind, params)."""
    kind, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--response-lengths {spec!r}: {item!r} is not key=value")
        params[key.strip()] = float(value)
    need = {"lognormal": {"median", "max"}, "uniform": {"min", "max"}, "fixed": {"len"}}
    if kind not in need:
        raise ValueError(f"--response-lengths {spec!r}: unknown distribution {kind!r}; use lognormal, uniform or fixed")
    if not need[kind] <= set(params):
        raise ValueError(f"--response-lengths {spec!r}: {kind} needs {sorted(need[kind])}")
    return kind, params


def sample_lengths(spec: str, n: int, seed: int = 0) -> torch.Tensor:
    """(n,) int64 response lengths >= 1 drawn from `spec` (see :func:`parse_length_spec`), reproducibly."""
    kind, p = parse_length_spec(spec)
    g = torch.Generator().manual_seed(seed)
    if kind == "fixed":
        x = torch.full((n,), p["len"])
    elif kind == "uniform":
        x = p["min"] + torch.rand(n, generator=g) * (p["max"] - p["min"])
    else:
        x = torch.exp(math.log(p["median"]) + p.get("sigma", 0.8) * torch.randn(n, generator=g))
    hi = p.get("max", p.get("len"))
    return x.round().clamp(1, hi).long()


def synthetic_batch(response_lengths: torch.Tensor, prompt_len: int, vocab: int, group_size: int, seed: int = 0):
    """A RolloutBatch of random tokens: prompts of `prompt_len`, responses of the given lengths, right-padded."""
    from megatron_rlvr.rollout.types import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    n = len(response_lengths)
    total = prompt_len + response_lengths
    L = int(total.max())
    pos = torch.arange(L).expand(n, L)
    tokens = torch.randint(0, vocab, (n, L), generator=g)
    tokens[pos >= total[:, None]] = 0
    mask = (pos >= prompt_len) & (pos < total[:, None])
    return RolloutBatch(
        tokens=tokens, prompt_lens=torch.full((n,), prompt_len), response_lens=response_lengths.clone(),
        response_mask=mask, logprob_cal=torch.zeros(n, L), logprob_rollout_policy=torch.zeros(n, L),
        rewards=torch.rand(n, generator=g), group_ids=torch.arange(n) // group_size,
        advantages=torch.randn(n, generator=g),
    )


def plain_packed_lm_step(model, tokens: torch.Tensor, lengths: torch.Tensor, plan: list[torch.Tensor]) -> None:
    """One optimizer step of next-token cross-entropy on packed micro-batches (rows `plan`), through Megatron's
    own output-layer loss (``labels=``; full-vocabulary float32 logits, Megatron's choice)."""
    from megatron_rlvr.update.packing import pack_rows

    packs = [pack_rows(tokens[idx], lengths[idx]) for idx in plan]
    n_tok = sum(p.num_tokens - len(p.bounds) + 1 for p in packs)  # predicted positions
    scale = len(packs) * max(model.layout.dp, 1)

    def step_fn(data_iterator, chunk):
        p = next(data_iterator).to(model.ctx.device)
        labels = p.next_token_targets().unsqueeze(0)
        valid = ~torch.cat([p.is_start[1:], p.is_start.new_ones(1)])  # the last token of a sequence predicts nothing
        out = chunk(p.tokens, p.position_ids, None, labels=labels, packed_seq_params=p.seq_params())  # (1, T)

        def loss_func(per_token):
            loss = (per_token[0].float() * valid).sum() / n_tok
            return loss * scale, {"loss": float(loss.detach())}

        return out, loss_func

    with model.ctx.layout(model.name):
        for c in model.ddp_chunks:
            c.zero_grad_buffer()
        model.optimizer.zero_grad()
        from megatron.core.pipeline_parallel import get_forward_backward_func

        get_forward_backward_func()(
            forward_step_func=step_fn, data_iterator=iter(packs), model=model.ddp_chunks,
            num_microbatches=len(packs), seq_length=packs[0].num_tokens, micro_batch_size=1, forward_only=False)
        model.optimizer.step()


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak GiB allocated during `fn`)."""
    from megatron_rlvr.bench.harness import time_host

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _, dt = time_host(fn)
    return dt, (torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))


def run(args) -> int:
    from megatron_rlvr.config import AlgorithmConfig, ModelConfig, OptimConfig, ParallelConfig, RolloutConfig, RunConfig
    from megatron_rlvr.update.micro_batching import plan_micro_batches
    from megatron_rlvr.qwen3.shapes import get_preset
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.update import recompute_logprobs, sequence_lengths, update_memory, update_policy

    n = args.prompts * args.group_size
    resp = sample_lengths(args.response_lengths, n, seed=args.seed)
    vocab = get_preset(args.policy).vocab_size
    batch = synthetic_batch(resp, args.prompt_len, vocab, args.group_size, seed=args.seed)
    lengths = sequence_lengths(batch)
    real = int(lengths.sum())
    ctx = init_distributed({"policy": ParallelConfig(), "memory": ParallelConfig()})
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
    policy = TrainableModel("policy", ModelConfig(preset=args.policy, dtype=dtype), OptimConfig(lr=1e-6), ctx)
    memory = TrainableModel("memory", ModelConfig(preset=args.memory, dtype=dtype), OptimConfig(lr=1e-5), ctx)
    variants = {
        "padded": AlgorithmConfig(micro_batch_size=args.micro_batch_size),
        "packed": AlgorithmConfig(micro_batch_size=args.micro_batch_size, pack_sequences=True,
                                  max_tokens_per_micro_batch=args.max_tokens),
    }
    # the same packed micro-batches with the fused Triton log-prob kernels (model.logprob_impl=triton)
    impls = {"padded": "torch", "packed": "torch"}
    if not args.no_triton_logprobs and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        variants["packed_triton"], impls["packed_triton"] = variants["packed"], "triton"
    packed_plan = plan_micro_batches(torch.arange(n), lengths, args.micro_batch_size, args.max_tokens, packed=True)
    cfgs = {name: RunConfig(algorithm=algo, rollout=RolloutConfig(temperature=1.0, max_new_tokens=int(resp.max())))
            for name, algo in variants.items()}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in (*variants, "plain")}
    # The variants take turns within every step (padded, packed, plain), so that a drift of the device over the
    # run (clocks, allocator state) hits each alike: timed one variant after another, the packed / plain ratio
    # moved from 0.989 to 0.939 between two H200 sessions with the same code.
    for step in range(args.steps + 1):
        for name, cfg in cfgs.items():
            algo, old = cfg.algorithm, {}
            policy.cfg.logprob_impl = memory.cfg.logprob_impl = impls[name]  # read by every token-stats call

            def recompute(algo=algo, old=old):
                old["lp"], _ = recompute_logprobs(policy, batch, 1.0, algo.micro_batch_size, with_entropy=True,
                                                  algo=algo)

            t = {"logprob_recompute": _measure(recompute),
                 "policy_update": _measure(lambda cfg=cfg, old=old: update_policy(
                     policy, batch, old["lp"], cfg.algorithm, temperature=cfg.rollout.temperature,
                     max_response_len=cfg.rollout.max_new_tokens, seed=cfg.seed, step=step)),
                 "memory_update": _measure(lambda cfg=cfg: update_memory(memory, batch, cfg.algorithm))}
            if step > 0:  # step 0 warms up the allocator and kernels
                for k, v in t.items():
                    samples[name].setdefault(k, []).append(v)
        policy.cfg.logprob_impl = memory.cfg.logprob_impl = "torch"
        t_plain = _measure(lambda: plain_packed_lm_step(policy, batch.tokens, lengths, packed_plan))
        if step > 0:
            samples["plain"].setdefault("policy_update", []).append(t_plain)
    results = {name: {k: (statistics.median(s for s, _ in v), max(m for _, m in v)) for k, v in phases.items()}
               for name, phases in samples.items()}
    static = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    _report(args, results, real, tuple(batch.tokens.shape), len(packed_plan), resp, static)
    ctx.destroy()
    return 0


def _report(args, results, real: int, shape: tuple, n_packed_mbs: int, resp: torch.Tensor, static: float) -> None:
    from megatron_rlvr.bench.harness import device_name

    device = device_name()
    tok_s = {(v, ph): real / s for v, phases in results.items() for ph, (s, _) in phases.items()}
    print(f"\nUpdate stage at ragged lengths: policy {args.policy} + memory {args.memory}, {shape[0]} responses, "
          f"response lengths {args.response_lengths} (median {int(resp.median())}, max {int(resp.max())}), prompt "
          f"{args.prompt_len}; {real} real tokens = {real / (shape[0] * shape[1]):.0%} of the padded {shape}; "
          f"packed: {n_packed_mbs} micro-batches of <= {args.max_tokens} tokens; padded: {args.micro_batch_size} "
          f"rows per micro-batch; device {device}; median of {args.steps} steps")
    print(f"{'phase':<20}{'variant':<24}{'seconds':>9}{'real tok/s':>12}{'peak GiB':>10}")
    for ph in ("logprob_recompute", "policy_update", "memory_update"):
        for v, label in (("padded", "padded"), ("packed", "packed"), ("packed_triton", "packed, triton log-probs"),
                         ("plain", "plain packed LM step")):
            if ph in results.get(v, {}):
                s, m = results[v][ph]
                print(f"{ph:<20}{label:<24}{s:>9.3f}{tok_s[(v, ph)]:>12.0f}{m:>10.2f}")
    print(f"(peaks include {static:.2f} GiB allocated between phases: both models' weights, grads, optimizer states)")
    ratio_plain = tok_s[("packed", "policy_update")] / tok_s[("plain", "policy_update")]
    ratio_padded = tok_s[("packed", "policy_update")] / tok_s[("padded", "policy_update")]
    print(f"\n{'packed RL update / plain packed LM step':<44}{ratio_plain:>8.3f}   (target >= 0.95)")
    print(f"{'packed RL update / padded RL update':<44}{ratio_padded:>8.3f}   (target >= 2)")
    ratios = {}
    if "packed_triton" in results:
        for ph in ("logprob_recompute", "policy_update", "memory_update"):
            ratios[f"packed_triton_over_packed_{ph}"] = results["packed"][ph][0] / results["packed_triton"][ph][0]
        ratios["packed_triton_over_plain"] = tok_s[("packed_triton", "policy_update")] / tok_s[("plain", "policy_update")]
        print(f"{'packed RL update, triton log-probs / plain':<44}{ratios['packed_triton_over_plain']:>8.3f}   "
              "(target >= 0.95)")
        print("triton / torch log-probs, speed-up per phase: " + ", ".join(
            f"{ph} {ratios[f'packed_triton_over_packed_{ph}']:.3f}x"
            for ph in ("logprob_recompute", "policy_update", "memory_update")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from megatron_rlvr.bench.harness import emit, provenance

    record = {**provenance(),
              "policy": args.policy, "memory": args.memory, "response_lengths": args.response_lengths,
              "responses": shape[0], "real_tokens": real, "padded_tokens": shape[0] * shape[1],
              "max_tokens_per_micro_batch": args.max_tokens, "micro_batch_size": args.micro_batch_size,
              **{f"{v}_{ph}_s": round(s, 4) for v, phases in results.items() for ph, (s, _) in phases.items()},
              **{f"{v}_{ph}_peak_gib": round(m, 3) for v, phases in results.items() for ph, (_, m) in phases.items()},
              "static_gib": round(static, 3), "packed_over_plain": round(ratio_plain, 4),
              "packed_over_padded": round(ratio_padded, 4), **{k: round(v, 4) for k, v in ratios.items()}}
    emit(record, out / "bench_packing.csv")


def add_arguments(p) -> None:
    """The options of this benchmark, for `bench train`'s parser (it runs when --response-lengths is given)."""
    g = p.add_argument_group("ragged lengths (--response-lengths selects this benchmark)")
    g.add_argument("--response-lengths", default=None,
                   help="e.g. lognormal:median=1024,max=4096[,sigma=0.8] | uniform:min=64,max=4096 | fixed:len=N")
    g.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per response")
    g.add_argument("--max-tokens", type=int, default=16384, help="token budget of a packed micro-batch")
    g.add_argument("--seed", type=int, default=0, help="seed of the lengths and tokens")
    g.add_argument("--no-triton-logprobs", action="store_true",
                   help="leave out the packed variant with the fused Triton log-prob kernels (on by default on a GPU)")
