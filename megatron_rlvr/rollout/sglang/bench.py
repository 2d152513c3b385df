"""Rollout stage, benchmark: decode throughput of (a) SGLang serving the policy alone, (b) DLC inside SGLang,
(c) naive DLC of two SGLang engines combined in Python per step (issue 5; run on a GPU via tools/gpu_sglang.sh).

    python -m megatron_rlvr.rollout.sglang.bench --policy qwen3-1.7b --memory qwen3-0.6b --batch 1 64 256

Random weights (SGLang's load_format=dummy), bf16, random prompts of --prompt-len tokens, --new-tokens decoded
per sequence with no stop token. Each configuration: one warm-up, then the median of --repeats timed runs.
All three use the same attention backend (--attention-backend, default triton: it needs nothing beyond
sglang-kernel's common ops) and CUDA graphs as SGLang configures them by default; (a) and (c) sample with
SGLang's own PyTorch sampler, (b) with the fused DLC sampler.
Prints one line per row and, last, one JSON object with every row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from megatron_rlvr.models.presets import get_preset
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


def _engine_kwargs(attention_backend: str, mem_frac: float) -> dict:
    return dict(load_format="dummy", mem_fraction_static=mem_frac, log_level="warning", dtype="bfloat16",
                attention_backend=attention_backend)


def bench_policy_only(model_dir: Path, batches, prompt_len, new_tokens, repeats, vocab, mem_frac, attn):
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

            rows.append(("a_policy_only", b, _time(run, repeats)))
    finally:
        eng.shutdown()
    return rows


def bench_dlc(model_dir: Path, policy, memory, batches, prompt_len, new_tokens, repeats, mem_frac, lam, attn):
    from megatron_rlvr.rollout.sglang import SGLangEngine

    eng = SGLangEngine(str(model_dir), policy_shape=policy, memory_shape=memory, placement="dedicated",
                       sglang=_engine_kwargs(attn, mem_frac))
    rows = []
    try:
        for b in batches:
            prompts = _prompts(b, prompt_len, policy.vocab_size, b)
            sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, lam=lam)

            def run():
                eng.flush_cache()
                gens = eng.generate(prompts, sp)
                assert all(len(g.response_ids) == new_tokens for g in gens)

            rows.append(("b_dlc_in_engine", b, _time(run, repeats)))
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

            rows.append(("c_naive_two_engines", b, _time(run, repeats)))
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
    args = ap.parse_args(argv)
    policy, memory = get_preset(args.policy), get_preset(args.memory)
    work = Path(tempfile.mkdtemp(prefix="dlc_bench_"))
    rows = []
    if "a" not in args.skip:
        rows += bench_policy_only(_plain_model_dir(policy, work / "policy"), args.batch, args.prompt_len,
                                  args.new_tokens, args.repeats, policy.vocab_size, 0.8, args.attention_backend)
    if "b" not in args.skip:
        rows += bench_dlc(build_model_dir(work / "dlc", policy, memory), policy, memory, args.batch,
                          args.prompt_len, args.new_tokens, args.repeats, 0.8, args.lam, args.attention_backend)
    if "c" not in args.skip and args.naive_batch:
        rows += [(n, b, t * args.new_tokens / args.naive_new_tokens) for n, b, t in bench_naive(
            _plain_model_dir(policy, work / "p"), _plain_model_dir(memory, work / "m"), args.naive_batch,
            args.prompt_len, args.naive_new_tokens, args.naive_repeats, policy.vocab_size, args.lam,
            args.attention_backend)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    ratio = memory.num_parameters() / policy.num_parameters()
    out = []
    for name, b, t in rows:
        tps = b * args.new_tokens / t
        out.append(dict(config=name, batch=b, seconds=round(t, 4), tokens_per_s=round(tps, 1),
                        ms_per_step=round(1000 * t / args.new_tokens, 3)))
        print(f"{name:22s} batch={b:4d} {tps:10.1f} tok/s {1000 * t / args.new_tokens:8.3f} ms/step")
    a = {r["batch"]: r["ms_per_step"] for r in out if r["config"] == "a_policy_only"}
    for r in out:
        if r["config"] != "a_policy_only" and r["batch"] in a:
            r["vs_policy_only"] = round(r["ms_per_step"] / a[r["batch"]], 3)
    print(json.dumps(dict(device=device, policy=args.policy, memory=args.memory, param_ratio=round(ratio, 4),
                          target_ratio=round(1.1 * (1 + ratio), 4), new_tokens=args.new_tokens,
                          prompt_len=args.prompt_len, date=time.strftime("%Y-%m-%d"), rows=out)))


if __name__ == "__main__":
    main()
