"""TP/PP parity on CPU (gloo): every layout trains the tiny Qwen3 exactly like one process does.

One reference process trains the tiny policy (SGD with momentum, so weight changes are linear in the gradients)
and the tiny memory model (cross-entropy, Adam); multi-rank runs load the reference's initial checkpoint into
their own layout (which also exercises resharding) and train on the same batch. Compared: per-step losses and grad
norms, final log-probs, and the weight change of every parameter (= the accumulated gradients) read from the
saved dist-checkpoints. Also covered: the interleaved pipeline (PP=2 x 2 virtual stages), checkpoints written at one
layout and loaded at another (weights, and optimizer state for a resumed step, incl. the distributed optimizer),
and bit-reproducibility on CPU. The NCCL twin of these tests is tests/gpu/test_parallel_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
from tests.helpers.dist import run_distributed

N, L, MBS = 8, 12, 2  # batch of 8 sequences of 12 tokens, micro-batches of 2
STEPS = 3
POLICY_OPT = dict(optimizer="sgd", lr=0.1, sgd_momentum=0.9, clip_grad=0.0)
MEMORY_OPT = dict(optimizer="adam", lr=1e-3, clip_grad=1.0)


def _tokens() -> torch.Tensor:
    return torch.randint(0, 128, (N, L), generator=torch.Generator().manual_seed(7))


def _share(dp_rank: int, dp: int) -> list[dict]:
    """This data-parallel rank's micro-batches of the fixed batch."""
    mbs = [{"tokens": t} for t in _tokens().split(MBS)]
    per = len(mbs) // dp
    return mbs[dp_rank * per:(dp_rank + 1) * per]


def _policy_loss(lp, ent, mb):
    # Token-mean over the WHOLE batch (global normalisation), with an entropy bonus to exercise its gradient.
    n_tok = N * (L - 1)
    loss = -lp[:, 1:].sum() / n_tok - 0.01 * ent[:, 1:].sum() / n_tok
    return loss, {"entropy": ent[:, 1:].mean()}


def _memory_loss(lp, ent, mb):
    return -lp[:, 1:].sum() / (N * (L - 1)), {"nll_mb": -lp[:, 1:].mean()}


def _policy_cfg(par: ParallelConfig, init_from=None, preset="tiny") -> ModelConfig:
    return ModelConfig(preset=preset, parallel=par, dtype="float32", init_seed=11, init_from=init_from)


def _dp_rank(ctx, name):
    from megatron.core import parallel_state

    with ctx.layout(name):
        return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def _train(model, name, ctx, steps, loss_fn, with_entropy, save_at=None):
    r, dp = _dp_rank(ctx, name)
    out = []
    for step in range(1, steps + 1):
        out.append(model.train_step(_share(r, dp), loss_fn, temperature=1.0, with_entropy=with_entropy))
        if save_at and step in save_at:
            model.save_checkpoint(save_at[step])
    return out


# ------------------------------------------------------------------------------------------------ workers
def _reference_worker(tmp: str) -> dict:
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    distopt = ParallelConfig(distributed_optimizer=True)
    ctx = init_distributed({"policy": ParallelConfig(), "memory": ParallelConfig(), "distopt": distopt})
    out = {}
    pol = TrainableModel("policy", _policy_cfg(ParallelConfig()), OptimConfig(**POLICY_OPT), ctx)
    tokens = _tokens()
    lp, ent = pol.forward_logprobs(tokens, temperature=0.7, micro_batch_size=3, with_entropy=True)
    with torch.no_grad():
        dev = ctx.device
        logits = pol.model_chunks[0](tokens.to(dev), torch.arange(L, device=dev).expand(N, L), None)
        logits = logits.float().cpu() / 0.7
    logp = torch.log_softmax(logits, -1)[:, :-1]
    out["direct_lp"] = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    out["direct_ent"] = -(logp.exp() * logp).sum(-1)
    out["fwd_lp"], out["fwd_ent"] = lp, ent
    pol.save_checkpoint(f"{tmp}/init", with_optimizer=False)
    out["policy"] = _train(pol, "policy", ctx, STEPS, _policy_loss, True, {2: f"{tmp}/ref_2", 3: f"{tmp}/ref_3"})
    out["policy_lp"] = pol.forward_logprobs(tokens, 1.0, MBS)[0]

    mem = TrainableModel("memory", _policy_cfg(ParallelConfig(), preset="tiny-mem"), OptimConfig(**MEMORY_OPT), ctx)
    mem.save_checkpoint(f"{tmp}/mem_init", with_optimizer=False)
    out["memory"] = _train(mem, "memory", ctx, 2, _memory_loss, False)
    out["memory_lp"] = mem.forward_logprobs(tokens, 1.0, MBS)[0]

    # Four layers for the interleaved pipeline; Adam under the distributed optimizer for its checkpoint format.
    deep = TrainableModel("policy", _policy_cfg(ParallelConfig(), preset="tiny-deep"), OptimConfig(**POLICY_OPT), ctx)
    deep.save_checkpoint(f"{tmp}/deep_init", with_optimizer=False)
    out["deep"] = _train(deep, "policy", ctx, 2, _policy_loss, True)
    out["deep_lp"] = deep.forward_logprobs(tokens, 1.0, MBS)[0]
    dopt = TrainableModel("distopt", _policy_cfg(distopt, f"{tmp}/deep_init", "tiny-deep"),
                          OptimConfig(**MEMORY_OPT), ctx)
    out["distopt"] = _train(dopt, "distopt", ctx, 2, _policy_loss, True, {1: f"{tmp}/distopt_1"})

    # Bit-reproducibility: the same seed and data give bitwise-identical training on CPU.
    twins = [TrainableModel("policy", _policy_cfg(ParallelConfig()), OptimConfig(optimizer="adam", lr=3e-3), ctx)
             for _ in range(2)]
    runs = [_train(t, "policy", ctx, 8, _memory_loss, False) for t in twins]
    out["learn_losses"] = [r["loss"] for r in runs[0]]
    out["twin_losses"] = [[r["loss"] for r in run] for run in runs]
    out["twin_params_equal"] = all(torch.equal(a, b) for a, b in zip(twins[0].parameters(), twins[1].parameters()))
    return out


def _tp2_worker(tmp: str) -> dict:
    """Policy at TP=2 and the memory model at TP=1 x DP=2 in the same world, steps interleaved."""
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    ctx = init_distributed({"policy": ParallelConfig(tp=2), "memory": ParallelConfig(tp=1)})
    pol = TrainableModel("policy", _policy_cfg(ParallelConfig(tp=2), f"{tmp}/init"), OptimConfig(**POLICY_OPT), ctx)
    mem = TrainableModel("memory", _policy_cfg(ParallelConfig(), f"{tmp}/mem_init", "tiny-mem"),
                         OptimConfig(**MEMORY_OPT), ctx)
    out = {"policy": [], "memory": []}
    for step in (1, 2):
        out["policy"] += _train(pol, "policy", ctx, 1, _policy_loss, True)
        out["memory"] += _train(mem, "memory", ctx, 1, _memory_loss, False)
    pol.save_checkpoint(f"{tmp}/tp2_2")
    out["policy"] += _train(pol, "policy", ctx, 1, _policy_loss, True)
    pol.save_checkpoint(f"{tmp}/tp2_3", with_optimizer=False)
    out["policy_lp"] = pol.forward_logprobs(_tokens(), 1.0, MBS)[0]
    out["memory_lp"] = mem.forward_logprobs(_tokens(), 1.0, MBS)[0]
    return out


def _pp2_worker(tmp: str) -> dict:
    """Policy at PP=2; then checkpoints written at TP=2 loaded into TP=1 x DP=2 (weights only / with optimizer)."""
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    ctx = init_distributed({"policy": ParallelConfig(pp=2), "dense": ParallelConfig()})
    pol = TrainableModel("policy", _policy_cfg(ParallelConfig(pp=2), f"{tmp}/init"), OptimConfig(**POLICY_OPT), ctx)
    out = {"policy": _train(pol, "policy", ctx, STEPS, _policy_loss, True, {STEPS: f"{tmp}/pp2_3"})}
    out["policy_lp"] = pol.forward_logprobs(_tokens(), 1.0, MBS)[0]
    # Uneven micro-batches (3+3+2) and a shorter sequence length travel through the pipeline too.
    out["policy_lp_mbs3"] = pol.forward_logprobs(_tokens(), 1.0, 3)[0]
    out["policy_lp_prefix"] = pol.forward_logprobs(_tokens()[:, :7], 1.0, 3)[0]
    final = TrainableModel("dense", _policy_cfg(ParallelConfig(), f"{tmp}/tp2_3"), OptimConfig(**POLICY_OPT), ctx)
    out["tp2_loaded_at_tp1_lp"] = final.forward_logprobs(_tokens(), 1.0, MBS)[0]
    resumed = TrainableModel("dense", _policy_cfg(ParallelConfig()), OptimConfig(**POLICY_OPT), ctx)
    resumed.load_checkpoint(f"{tmp}/tp2_2", load_optimizer=True)
    out["resumed_steps_done"] = resumed.steps_done
    out["resumed_step3"] = _train(resumed, "dense", ctx, 1, _policy_loss, True)[0]
    return out


def _vpp_distopt_worker(tmp: str) -> dict:
    """Interleaved pipeline (PP=2 x 2 virtual stages) on tiny-deep; distributed-optimizer resume at DP=2."""
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    vpp, distopt = ParallelConfig(pp=2, vpp=2), ParallelConfig(distributed_optimizer=True)
    ctx = init_distributed({"policy": vpp, "distopt": distopt})
    deep = TrainableModel("policy", _policy_cfg(vpp, f"{tmp}/deep_init", "tiny-deep"), OptimConfig(**POLICY_OPT), ctx)
    out = {"deep": _train(deep, "policy", ctx, 2, _policy_loss, True)}
    out["deep_lp"] = deep.forward_logprobs(_tokens(), 1.0, MBS)[0]
    dopt = TrainableModel("distopt", _policy_cfg(distopt, preset="tiny-deep"), OptimConfig(**MEMORY_OPT), ctx)
    dopt.load_checkpoint(f"{tmp}/distopt_1", load_optimizer=True)  # saved at DP=1
    out["distopt_step2"] = _train(dopt, "distopt", ctx, 1, _policy_loss, True)[0]
    return out


def _tp2pp2_worker(tmp: str) -> dict:
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    par = ParallelConfig(tp=2, pp=2)
    ctx = init_distributed({"policy": par})
    pol = TrainableModel("policy", _policy_cfg(par, f"{tmp}/init"), OptimConfig(**POLICY_OPT), ctx)
    out = {"policy": _train(pol, "policy", ctx, STEPS, _policy_loss, True, {STEPS: f"{tmp}/tp2pp2_3"})}
    out["policy_lp"] = pol.forward_logprobs(_tokens(), 1.0, MBS)[0]
    return out


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("parity"))
    out = {"tmp": tmp, "ref": run_distributed(_reference_worker, 1, args=(tmp,), timeout=240)[0]}
    out["tp2"] = run_distributed(_tp2_worker, 2, args=(tmp,), timeout=240)
    out["pp2"] = run_distributed(_pp2_worker, 2, args=(tmp,), timeout=240)
    out["vpp"] = run_distributed(_vpp_distopt_worker, 2, args=(tmp,), timeout=240)
    return out


def _model_tensors(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """Full (unsharded) model weights of a dist-checkpoint, read without any process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt_dir, f"{ckpt_dir}.pt")
    sd = torch.load(f"{ckpt_dir}.pt", weights_only=False)
    return {k: v for k, v in sd.items() if torch.is_tensor(v) and not k.startswith("optimizer.")}


def _assert_steps_match(got: list[dict], ref: list[dict]):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        for key in ("loss", "entropy", "grad_norm", "lr"):
            assert g[key] == pytest.approx(r[key], rel=2e-5, abs=1e-6), key


def _assert_same_weight_updates(tmp: str, layout_ckpt: str):
    init, ref, got = (_model_tensors(f"{tmp}/{d}") for d in ("init", "ref_3", layout_ckpt))
    assert set(got) == set(ref) == set(init)
    for k in init:
        d_ref, d_got = ref[k] - init[k], got[k] - init[k]
        assert d_ref.abs().max() > 1e-4, f"{k} did not train"
        torch.testing.assert_close(d_got, d_ref, rtol=0, atol=1e-5 + 1e-4 * d_ref.abs().max().item(), msg=k)


# ------------------------------------------------------------------------------------------------ tests
def test_forward_logprobs_equal_log_softmax_of_the_gptmodel_logits(runs):
    ref = runs["ref"]
    assert torch.all(ref["fwd_lp"][:, 0] == 0) and torch.all(ref["fwd_ent"][:, 0] == 0)
    torch.testing.assert_close(ref["fwd_lp"][:, 1:], ref["direct_lp"], rtol=0, atol=2e-6)
    torch.testing.assert_close(ref["fwd_ent"][:, 1:], ref["direct_ent"], rtol=0, atol=2e-6)


def test_tiny_model_loss_falls_on_cpu(runs):
    losses = runs["ref"]["learn_losses"]
    assert losses[-1] < 0.8 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))


def test_cpu_training_is_bit_reproducible(runs):
    a, b = runs["ref"]["twin_losses"]
    assert a == b and runs["ref"]["twin_params_equal"]


def test_tensor_parallel_2_matches_single_process_losses_and_gradients(runs):
    for rank_out in runs["tp2"]:
        _assert_steps_match(rank_out["policy"], runs["ref"]["policy"])
        torch.testing.assert_close(rank_out["policy_lp"], runs["ref"]["policy_lp"], rtol=0, atol=2e-5)
    _assert_same_weight_updates(runs["tmp"], "tp2_3")


def test_pipeline_parallel_2_matches_single_process_losses_and_gradients(runs):
    for rank_out in runs["pp2"]:  # both stages report the last stage's numbers
        _assert_steps_match(rank_out["policy"], runs["ref"]["policy"])
        torch.testing.assert_close(rank_out["policy_lp"], runs["ref"]["policy_lp"], rtol=0, atol=2e-5)
    _assert_same_weight_updates(runs["tmp"], "pp2_3")


def test_pipeline_forward_handles_uneven_micro_batches_and_other_lengths(runs):
    for rank_out in runs["pp2"]:
        torch.testing.assert_close(rank_out["policy_lp_mbs3"], rank_out["policy_lp"], rtol=0, atol=1e-6)
        # causal attention: log-probs of a prefix do not depend on what follows it
        torch.testing.assert_close(rank_out["policy_lp_prefix"], rank_out["policy_lp"][:, :7], rtol=0, atol=1e-5)


def test_memory_model_on_its_own_layout_trains_like_its_single_process_run(runs):
    ref = runs["ref"]["memory"]
    for rank_out in runs["tp2"]:  # memory at TP=1 x DP=2 while the policy runs at TP=2
        for g, r in zip(rank_out["memory"], ref):
            assert g["loss"] == pytest.approx(r["loss"], rel=2e-5)
            assert g["grad_norm"] == pytest.approx(r["grad_norm"], rel=2e-5)
        torch.testing.assert_close(rank_out["memory_lp"], runs["ref"]["memory_lp"], rtol=0, atol=2e-5)


def test_checkpoint_saved_at_tp2_loads_at_tp1_with_identical_logits(runs):
    for rank_out in runs["pp2"]:
        torch.testing.assert_close(rank_out["tp2_loaded_at_tp1_lp"], runs["tp2"][0]["policy_lp"], rtol=0, atol=2e-5)


def test_resume_with_optimizer_state_across_layouts_continues_identically(runs):
    for rank_out in runs["pp2"]:  # saved at TP=2 after step 2, resumed at TP=1 x DP=2 for step 3
        assert rank_out["resumed_steps_done"] == 2
        _assert_steps_match([rank_out["resumed_step3"]], runs["ref"]["policy"][2:])


def test_interleaved_pipeline_matches_single_process(runs):
    for rank_out in runs["vpp"]:  # PP=2 x 2 virtual stages, batch_p2p_comm off on gloo (MEGATRON-NOTES.md)
        _assert_steps_match(rank_out["deep"], runs["ref"]["deep"])
        torch.testing.assert_close(rank_out["deep_lp"], runs["ref"]["deep_lp"], rtol=0, atol=2e-5)


def test_distributed_optimizer_resumes_at_another_data_parallel_size(runs):
    for rank_out in runs["vpp"]:  # Adam state saved at DP=1, loaded sharded over DP=2
        _assert_steps_match([rank_out["distopt_step2"]], runs["ref"]["distopt"][1:])


def test_tensor_2_x_pipeline_2_on_four_ranks_matches_single_process(runs):
    out = run_distributed(_tp2pp2_worker, 4, args=(runs["tmp"],), timeout=240)
    for rank_out in out:
        _assert_steps_match(rank_out["policy"], runs["ref"]["policy"])
        torch.testing.assert_close(rank_out["policy_lp"], runs["ref"]["policy_lp"], rtol=0, atol=2e-5)
    _assert_same_weight_updates(runs["tmp"], "tp2pp2_3")
