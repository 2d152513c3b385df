"""Packed sequences and token-budget micro-batches give the padded path's log-probs, losses and gradients.

Each case runs the real update stage (``recompute_logprobs``, ``update_policy``, ``update_memory``) on the tiny
Qwen3 models, float32, over a ragged batch (lengths 1 to L), once per variant: padded fixed-size micro-batches
(the reference), packed (THD), and token-budgeted (packed and padded), under one process, TP=2, PP=2 and DP=2
(gloo). Compared: recomputed log-probs and entropies on every real token, the update's loss and grad norm, and
every parameter after the optimizer step (SGD without momentum: the weight change is the gradient).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.dist import run_distributed

N, L, PROMPT = 10, 16, 3
LENGTHS = [16, 3, 9, 1, 7, 12, 16, 5, 2, 11]  # ragged; a prompt-only row (3) and rows shorter than the prompt
VARIANTS = {
    "padded": dict(pack_sequences=False, max_tokens_per_micro_batch=0),
    "packed": dict(pack_sequences=True, max_tokens_per_micro_batch=0),
    "packed_budget": dict(pack_sequences=True, max_tokens_per_micro_batch=24),
    "padded_budget": dict(pack_sequences=False, max_tokens_per_micro_batch=40),
    # the memory update alone on its own, larger budget; the policy update keeps its fixed-size micro-batches
    "memory_budget": dict(pack_sequences=True, max_tokens_per_micro_batch=0, memory_max_tokens_per_micro_batch=60),
}


def _batch():
    from megatron_rlvr.rollout.types import RolloutBatch

    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor(LENGTHS)
    tokens = torch.randint(1, 128, (N, L), generator=g)
    pos = torch.arange(L).expand(N, L)
    tokens[pos >= lengths[:, None]] = 0  # right padding
    prompt = torch.clamp(lengths, max=PROMPT)
    mask = (pos >= prompt[:, None]) & (pos < lengths[:, None])
    return RolloutBatch(
        tokens=tokens, prompt_lens=prompt, response_lens=lengths - prompt, response_mask=mask,
        logprob_cal=torch.zeros(N, L), logprob_rollout_policy=torch.zeros(N, L), rewards=torch.rand(N, generator=g),
        group_ids=torch.arange(N) // 2, advantages=torch.randn(N, generator=g),
    )


def _cfg(loss_agg: str, **algo):
    from megatron_rlvr.config import AlgorithmConfig, RunConfig, RolloutConfig

    return RunConfig(
        algorithm=AlgorithmConfig(micro_batch_size=3, loss_agg=loss_agg, entropy_coef=0.01, **algo),
        rollout=RolloutConfig(temperature=0.8, max_new_tokens=L - 1),
    )


def _worker(layout: dict, loss_aggs: list[str], variants: list[str], with_memory: bool) -> dict:
    from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.update import recompute_logprobs, update_memory, update_policy

    par = ParallelConfig(**layout)
    ctx = init_distributed({"policy": par, "memory": par})
    batch = _batch()
    sgd = OptimConfig(optimizer="sgd", lr=0.5, sgd_momentum=0.0, clip_grad=0.0)
    out = {}
    for agg in loss_aggs:
        for name in variants:
            cfg = _cfg(agg, **VARIANTS[name])
            pol = TrainableModel("policy", ModelConfig(preset="tiny", parallel=par, dtype="float32", init_seed=5),
                                 sgd, ctx)
            old, ent = recompute_logprobs(pol, batch, 0.8, 3, with_entropy=True, algo=cfg.algorithm)
            stats = update_policy(pol, batch, old, cfg.algorithm, temperature=cfg.rollout.temperature,
                                  max_response_len=cfg.rollout.max_new_tokens, seed=cfg.seed, step=0)
            res = {"old": old, "ent": ent, "loss": stats["policy/loss"], "grad_norm": stats["policy/grad_norm"],
                   "params": [p.detach().clone() for p in pol.parameters()]}
            if with_memory:
                mem = TrainableModel("memory", ModelConfig(preset="tiny-mem", parallel=par, dtype="float32",
                                                           init_seed=6), sgd, ctx)
                res["memory"] = update_memory(mem, batch, cfg.algorithm)
                res["memory_params"] = [p.detach().clone() for p in mem.parameters()]
            out[(agg, name)] = res
    ctx.destroy()
    return out


def _valid() -> torch.Tensor:
    return torch.arange(L).expand(N, L) < torch.tensor(LENGTHS)[:, None]


def _assert_same(ref: dict, got: dict, label: str) -> None:
    v = _valid()
    torch.testing.assert_close(got["old"][v], ref["old"][v], rtol=1e-5, atol=1e-5, msg=f"{label}: log-probs")
    torch.testing.assert_close(got["ent"][v], ref["ent"][v], rtol=1e-5, atol=1e-5, msg=f"{label}: entropy")
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-7), label
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), label
    for a, b in zip(got["params"], ref["params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{label}: parameters after the step")
    if "memory" in ref:
        assert got["memory"]["memory/loss"] == pytest.approx(ref["memory"]["memory/loss"], rel=1e-5), label
        for a, b in zip(got["memory_params"], ref["memory_params"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{label}: memory parameters")


def _check(out: dict, loss_aggs: list[str], variants: list[str]) -> None:
    for agg in loss_aggs:
        ref = out[(agg, "padded")]
        for name in variants:
            if name != "padded":
                _assert_same(ref, out[(agg, name)], f"{agg}/{name}")


AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def test_packed_and_token_budgeted_updates_equal_the_padded_update_on_one_rank():
    (out,) = run_distributed(_worker, world_size=1, args=({}, AGGS, list(VARIANTS), True), timeout=400)
    _check(out, AGGS, list(VARIANTS))
    packed = out[("token-mean", "packed")]["old"]
    assert torch.all(packed[~_valid()] == 0), "packed rows are 0 past their length"
    from megatron_rlvr.update.micro_batching import plan_micro_batches

    rows, lengths = torch.arange(N), torch.tensor(LENGTHS)
    assert len(plan_micro_batches(rows, lengths, 3, 60, packed=True)) < len(plan_micro_batches(rows, lengths, 3, 0,
                                                                                               packed=True)), \
        "the memory-update budget of the 'memory_budget' case really gives fewer, larger micro-batches"


@pytest.mark.parametrize("layout", [dict(tp=2), dict(pp=2)], ids=["tp2", "pp2"])
def test_packed_update_equals_the_padded_update_under_tensor_and_pipeline_parallelism(layout):
    variants = ["padded", "packed", "packed_budget"]
    outs = run_distributed(_worker, world_size=2, args=(layout, ["seq-mean-token-mean"], variants, False),
                           timeout=400)
    for out in outs:
        _check(out, ["seq-mean-token-mean"], variants)


def test_token_budget_across_two_data_parallel_ranks_keeps_every_loss_aggregation_exact():
    variants = ["padded", "packed_budget", "padded_budget"]
    outs = run_distributed(_worker, world_size=2, args=({}, AGGS, variants, True), timeout=400)
    for out in outs:
        _check(out, AGGS, variants)
    rank0, rank1 = (o[("token-mean", "packed_budget")]["params"] for o in outs)
    for a, b in zip(rank0, rank1):
        assert torch.equal(a, b), "data-parallel replicas hold the same weights after the step"


def _unequal_counts_worker() -> dict:
    from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    ctx = init_distributed({"policy": ParallelConfig()})
    rank = torch.distributed.get_rank()
    tokens = _batch().tokens[:4]
    lengths = torch.tensor(LENGTHS[:4])

    def loss_fn(lp, ent, mb):
        return -lp.sum() / 40.0, {"lp_sum": lp.detach().sum()}

    splits = {"equal": [[[0, 1]], [[2, 3]]], "unequal": [[[0], [1]], [[2, 3]]]}
    out = {}
    for name, split in splits.items():
        model = TrainableModel("policy", ModelConfig(preset="tiny", dtype="float32", init_seed=5),
                               OptimConfig(optimizer="sgd", lr=0.5, sgd_momentum=0.0, clip_grad=0.0), ctx)
        mbs = [{"tokens": tokens[r], "lengths": lengths[r]} for r in split[rank]]
        stats = model.train_step(mbs, loss_fn)
        out[name] = (stats, [p.detach().clone() for p in model.parameters()])
    ctx.destroy()
    return out


def test_data_parallel_ranks_may_hold_different_numbers_of_micro_batches():
    for out in run_distributed(_unequal_counts_worker, world_size=2, timeout=300):
        (s_eq, p_eq), (s_un, p_un) = out["equal"], out["unequal"]
        assert s_un["loss"] == pytest.approx(s_eq["loss"], rel=1e-6)
        assert s_un["grad_norm"] == pytest.approx(s_eq["grad_norm"], rel=1e-6)
        # stats are means over all 3 (unequal) or 2 (equal) micro-batches of both ranks
        assert s_un["lp_sum"] * 3 == pytest.approx(s_eq["lp_sum"] * 2, rel=1e-5)
        for a, b in zip(p_un, p_eq):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _impl_worker(layout: dict, variants: list[str]) -> dict:
    # the real update stage with the chunked PyTorch log-probs and with the fused Triton kernels (interpreted here)
    from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.update import recompute_logprobs, update_memory, update_policy
    from megatron_rlvr.update.trainable import TrainableModel

    par = ParallelConfig(**layout)
    ctx = init_distributed({"policy": par, "memory": par})
    batch = _batch()
    sgd = OptimConfig(optimizer="sgd", lr=0.5, sgd_momentum=0.0, clip_grad=0.0)
    out = {}
    for impl in ("torch", "triton"):
        for name in variants:
            cfg = _cfg("seq-mean-token-mean", **VARIANTS[name])
            pol = TrainableModel("policy", ModelConfig(preset="tiny", parallel=par, dtype="float32", init_seed=5,
                                                       logprob_impl=impl), sgd, ctx)
            old, ent = recompute_logprobs(pol, batch, 0.8, 3, with_entropy=True, algo=cfg.algorithm)
            stats = update_policy(pol, batch, old, cfg.algorithm, temperature=cfg.rollout.temperature,
                                  max_response_len=cfg.rollout.max_new_tokens, seed=cfg.seed, step=0)
            mem = TrainableModel("memory", ModelConfig(preset="tiny-mem", parallel=par, dtype="float32", init_seed=6,
                                                       logprob_impl=impl), sgd, ctx)
            out[(impl, name)] = {
                "old": old, "ent": ent, "loss": stats["policy/loss"], "grad_norm": stats["policy/grad_norm"],
                "params": [p.detach().clone() for p in pol.parameters()],
                "memory": update_memory(mem, batch, cfg.algorithm),
                "memory_params": [p.detach().clone() for p in mem.parameters()]}
    ctx.destroy()
    return out


@pytest.mark.parametrize("layout", [{}, dict(tp=2)], ids=["one_rank", "tp2"])
def test_the_fused_triton_log_probs_give_the_pytorch_paths_update(layout):
    # model.logprob_impl=triton: recompute, PPO update and memory update through the fused kernels (run by Triton's
    # interpreter on the CPU) equal the chunked PyTorch path, padded and packed, to float32 rounding
    variants = ["padded", "packed_budget"]
    outs = run_distributed(_impl_worker, world_size=2 if layout else 1, args=(layout, variants), timeout=600,
                           env={"TRITON_INTERPRET": "1"})
    for out in outs:
        for name in variants:
            _assert_same(out[("torch", name)], out[("triton", name)], f"triton/{name}")


def test_the_fused_log_probs_on_a_cpu_run_are_refused_naming_the_field():
    from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
    from megatron_rlvr.distributed.parallel import ParallelContext
    from megatron_rlvr.update.trainable import TrainableModel

    ctx = ParallelContext.__new__(ParallelContext)
    ctx.device = torch.device("cpu")
    with pytest.raises(ValueError, match=r"policy\.logprob_impl=triton needs CUDA.*policy\.logprob_impl=torch"):
        TrainableModel("policy", ModelConfig(logprob_impl="triton"), OptimConfig(), ctx)
