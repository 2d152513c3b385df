"""Rollout stage, benchmark: decode throughput of (a) SGLang serving the policy alone, (b) DLC inside SGLang,
(c) naive DLC of two SGLang engines combined in Python per step (issue 5; run on a GPU via tools/gpu_sglang.sh).

    python -m megatron_rlvr.bench.rollout --policy qwen3-1.7b --memory qwen3-0.6b --batch 1 64 256

Random weights (SGLang's load_format=dummy), bf16, random prompts of --prompt-len tokens, --new-tokens decoded
per sequence with no stop token. Each configuration: one warm-up, then the median of --repeats timed runs.
All three use the same attention backend (--attention-backend, default triton: it needs nothing beyond
sglang-kernel's common ops) and CUDA graphs as SGLang configures them by default; (a) and (c) sample with
SGLang's own PyTorch sampler, (b) with the fused DLC sampler. (b) runs the memory stack concurrently with the
policy (models/dlc_qwen3.py); `--dlc-serial` adds a row with the two stacks one after the other.
`--profile-steps N` also records N decode steps of every row with SGLang's torch profiler (GPU activity only) and
prints where the GPU time of one step goes: busy time per step, idle gaps, the largest kernels.
Prints one line per row and, last, one JSON object with every row.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from megatron_rlvr.bench.harness import emit, provenance
from megatron_rlvr.qwen3.shapes import get_preset
from megatron_rlvr.rollout.sglang.model_dir import build_model_dir
from megatron_rlvr.rollout.types import SamplingParams


def _plain_model_dir(shape, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cfg = shape.to_hf_config_dict()
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _prompts(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, prompt_len), generator=g).tolist()


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (also fills nothing useful: every run flushes the prefix cache first)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def summarize_trace(path: Path, steps: int, top: int = 8) -> dict:
    """GPU time per decode step from a chrome trace of `steps` decode steps (torch profiler, CUDA activity).

    busy_ms: the union of kernel/memcpy/memset intervals, so concurrent streams count once; window_ms: first start
    to last end; kernels_ms: the kernel time summed per name (concurrent kernels each count).
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        events = json.load(f)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not gpu:
        raise ValueError(f"{path}: no GPU events (was the profile recorded with CUDA activity?)")
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in gpu)
    busy, cur_s, cur_e = 0.0, *spans[0]
    for s0, e0 in spans[1:]:
        if s0 > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s0, e0
        else:
            cur_e = max(cur_e, e0)
    busy += cur_e - cur_s
    window = spans[-1][1] - spans[0][0]
    per_name: dict[str, float] = {}
    for e in gpu:
        if e.get("cat") == "kernel":
            per_name[e["name"]] = per_name.get(e["name"], 0.0) + float(e.get("dur", 0))
    us_to_step_ms = 1e-3 / steps
    biggest = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    return dict(steps=steps, window_ms=round(window * us_to_step_ms, 4), busy_ms=round(busy * us_to_step_ms, 4),
                kernels_ms=round(sum(per_name.values()) * us_to_step_ms, 4),
                streams=len({e.get("tid") for e in gpu if e.get("cat") == "kernel"}),
                kernels_per_step=round(sum(1 for e in gpu if e.get("cat") == "kernel") / steps, 1),
                top=[(name[:60], round(t * us_to_step_ms, 4)) for name, t in biggest])


def _profile(engine, run, steps: int, out_dir: Path) -> dict:
    """Record `steps` decode steps of one run() with SGLang's profiler; summarize the decode trace."""
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.glob("*DECODE*"))
    engine.start_profile(output_dir=str(out_dir), num_steps=steps, activities=["GPU"], profile_by_stage=True,
                         with_stack=False, record_shapes=False)
    run()
    deadline, last = time.time() + 120, None
    while time.time() < deadline:  # the scheduler exports the trace itself; wait until its size settles
        new = [p for p in out_dir.glob("*DECODE*") if p not in before]
        size = new[0].stat().st_size if new else None
        if size and size == last:
            return summarize_trace(new[0], steps)
        last = size
        time.sleep(1.0)
    raise RuntimeError(f"no decode trace appeared in {out_dir} (SGLang profiler)")


def _engine_kwargs(attention_backend: str, mem_frac: float) -> dict:
    return dict(load_format="dummy", mem_fraction_static=mem_frac, log_level="warning", dtype="bfloat16",
                attention_backend=attention_backend)


def bench_policy_only(model_dir: Path, batches, prompt_len, new_tokens, repeats, vocab, mem_frac, attn,
                      profile_steps=0, profile_dir=None):
    import sglang

    eng = sglang.Engine(model_path=str(model_dir), skip_tokenizer_init=True, sampling_backend="pytorch",
                        **_engine_kwargs(attn, mem_frac))
    rows = []
    try:
        for b in batches:
            prompts = _prompts(b, prompt_len, vocab, b)
            sp = {"max_new_tokens": new_tokens, "temperature": 1.0, "ignore_eos": True}

            def run():
                eng.flush_cache()
                eng.generate(input_ids=prompts, sampling_params=sp)

            rows.append(("a_policy_only", b, _time(run, repeats),
                         _profile(eng, run, profile_steps, profile_dir / f"a_b{b}") if profile_steps else None))
    finally:
        eng.shutdown()
    return rows


def bench_dlc(model_dir: Path, policy, memory, batches, prompt_len, new_tokens, repeats, mem_frac, lam, attn,
              overlap=True, profile_steps=0, profile_dir=None, responses=None):
    """(b); `responses`, if given, receives {(config, batch): response ids of the last run} (seeded draws)."""
    from megatron_rlvr.rollout.sglang import SGLangEngine
    from megatron_rlvr.rollout.sglang.models.dlc_qwen3 import OVERLAP_ENV

    name = "b_dlc_in_engine" if overlap else "b_dlc_serial"
    os.environ[OVERLAP_ENV] = "1" if overlap else "0"  # read by SGLang's scheduler process, spawned below
    try:
        eng = SGLangEngine(str(model_dir), policy_shape=policy, memory_shape=memory, placement="dedicated",
                           sglang=_engine_kwargs(attn, mem_frac))
    finally:
        os.environ.pop(OVERLAP_ENV, None)
    rows = []
    try:
        for b in batches:
            prompts = _prompts(b, prompt_len, policy.vocab_size, b)
            sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, lam=lam, seed=b)

            def run():
                eng.flush_cache()
                gens = eng.generate(prompts, sp)
                assert all(len(g.response_ids) == new_tokens for g in gens)
                if responses is not None:
                    responses[(name, b)] = [g.response_ids for g in gens]

            rows.append((name, b, _time(run, repeats),
                         _profile(eng._engine, run, profile_steps, profile_dir / f"{name}_b{b}") if profile_steps
                         else None))
    finally:
        eng.shutdown()
    return rows


def bench_naive(policy_dir: Path, memory_dir: Path, batches, prompt_len, new_tokens, repeats, vocab, lam, attn):
    """Two engines; every step asks both for the full next-token distribution and combines them in Python."""
    import sglang

    from megatron_rlvr.kernels import dlc_sample

    kw = dict(skip_tokenizer_init=True, sampling_backend="pytorch", **_engine_kwargs(attn, 0.35))
    pe, me = sglang.Engine(model_path=str(policy_dir), **kw), sglang.Engine(model_path=str(memory_dir), **kw)
    rows = []
    try:
        for b in batches:
            prompts = _prompts(b, prompt_len, vocab, b)
            sp = {"max_new_tokens": 1, "temperature": 1.0}

            def full_logprobs(eng, seqs):
                outs = eng.generate(input_ids=seqs, sampling_params=sp, return_logprob=True,
                                    top_logprobs_num=vocab, logprob_start_len=-1)
                dense = torch.full((len(seqs), vocab), -float("inf"))
                for i, o in enumerate(outs):
                    vals = o["meta_info"]["output_top_logprobs"][0]
                    dense[i, [t for _, t, _ in vals]] = torch.tensor([v for v, _, _ in vals])
                return dense

            def run():
                pe.flush_cache()
                me.flush_cache()
                seqs = [list(p) for p in prompts]
                for step in range(new_tokens):
                    out = dlc_sample(full_logprobs(pe, seqs), full_logprobs(me, seqs), lam=lam, seed=0, offset=step)
                    for s, t in zip(seqs, out.tokens.tolist()):
                        s.append(t)

            rows.append(("c_naive_two_engines", b, _time(run, repeats), None))
    finally:
        pe.shutdown()
        me.shutdown()
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="qwen3-1.7b")
    ap.add_argument("--memory", default="qwen3-0.6b")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--naive-batch", type=int, nargs="*", default=[1, 64],
                    help="batches for (c); it moves full-vocabulary distributions through Python every step")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--naive-new-tokens", type=int, default=8)
    ap.add_argument("--naive-repeats", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"])
    ap.add_argument("--attention-backend", default="triton")
    ap.add_argument("--dlc-serial", action="store_true",
                    help="also run (b) with the memory stack after the policy on one stream")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="profile this many decode steps per row and print the GPU-time breakdown (0: off)")
    args = ap.parse_args(argv)
    if args.profile_steps and args.profile_steps >= args.new_tokens - 1:
        ap.error(f"--profile-steps must be below --new-tokens - 1 = {args.new_tokens - 1}")
    policy, memory = get_preset(args.policy), get_preset(args.memory)
    work = Path(tempfile.mkdtemp(prefix="dlc_bench_"))
    prof = dict(profile_steps=args.profile_steps, profile_dir=work / "profiles")
    rows, responses = [], {}
    if "a" not in args.skip:
        rows += bench_policy_only(_plain_model_dir(policy, work / "policy"), args.batch, args.prompt_len,
                                  args.new_tokens, args.repeats, policy.vocab_size, 0.8, args.attention_backend,
                                  **prof)
    if "b" not in args.skip:
        dlc_dir = build_model_dir(work / "dlc", policy, memory)
        for overlap in (True, False) if args.dlc_serial else (True,):
            rows += bench_dlc(dlc_dir, policy, memory, args.batch, args.prompt_len, args.new_tokens, args.repeats,
                              0.8, args.lam, args.attention_backend, overlap=overlap, responses=responses, **prof)
    if "c" not in args.skip and args.naive_batch:
        rows += [(n, b, t * args.new_tokens / args.naive_new_tokens, p) for n, b, t, p in bench_naive(
            _plain_model_dir(policy, work / "p"), _plain_model_dir(memory, work / "m"), args.naive_batch,
            args.prompt_len, args.naive_new_tokens, args.naive_repeats, policy.vocab_size, args.lam,
            args.attention_backend)]
    ratio = memory.num_parameters() / policy.num_parameters()
    out = []
    for name, b, t, profile in rows:
        tps = b * args.new_tokens / t
        out.append(dict(config=name, batch=b, seconds=round(t, 4), tokens_per_s=round(tps, 1),
                        ms_per_step=round(1000 * t / args.new_tokens, 3)))
        print(f"{name:22s} batch={b:4d} {tps:10.1f} tok/s {1000 * t / args.new_tokens:8.3f} ms/step")
        if profile:
            out[-1]["profile"] = profile
            print(f"    GPU per decode step: busy {profile['busy_ms']:.3f} ms of a {profile['window_ms']:.3f} ms "
                  f"window, kernels {profile['kernels_ms']:.3f} ms, {profile['kernels_per_step']} kernels, "
                  f"{profile['streams']} stream(s)")
            for kname, ms in profile["top"]:
                print(f"      {ms:8.4f} ms  {kname}")
    a = {r["batch"]: r["ms_per_step"] for r in out if r["config"] == "a_policy_only"}
    for r in out:
        if r["config"] != "a_policy_only" and r["batch"] in a:
            r["vs_policy_only"] = round(r["ms_per_step"] / a[r["batch"]], 3)
    # Same seeds, so the overlapped and serial engines must return the same responses. A weak check: dummy weights
    # give near-uniform logits, so the seeded noise picks most tokens whatever the logits are (a shared-buffer bug
    # that fed the memory's logits to the sampler as the policy's passed it). tests/sglang/test_gpu_overlap.py
    # compares every token's log-probs with a float32 reference instead.
    same = {b: responses[("b_dlc_in_engine", b)] == responses[("b_dlc_serial", b)] for b in args.batch
            if ("b_dlc_in_engine", b) in responses and ("b_dlc_serial", b) in responses}
    if same:
        print("overlapped == serial responses (same seeds), per batch:", same)
    emit({**provenance(), "overlap_equals_serial": same or None, "policy": args.policy, "memory": args.memory,
          "param_ratio": round(ratio, 4), "target_ratio": round(1.1 * (1 + ratio), 4), "new_tokens": args.new_tokens,
          "prompt_len": args.prompt_len, "rows": out})


if __name__ == "__main__":
    main()
