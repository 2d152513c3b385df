"""bf16 models (the GPU default) train, save and resume with their mixed-precision optimizer state.

Found on the H100: the local spec's norms stayed fp32 inside a bf16 model, and saving the optimizer failed with
"Param id N does not match any model sharded param". The same path runs on CPU, so CI guards it.
"""

from __future__ import annotations

from tests.helpers.dist import run_distributed


def _train_save_load(tmp: str) -> dict:
    import torch

    from megatron_rlvr.config import load_config
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    cfg = load_config(overrides=["policy.dtype=bfloat16", "optimizer.policy.lr=1e-3"])
    ctx = init_distributed(cfg)
    model = TrainableModel("policy", cfg.policy, cfg.optimizer.policy, ctx)
    dtypes = {p.dtype for c in model.model_chunks for p in c.parameters()}
    tokens = torch.randint(4, 120, (4, 9), generator=torch.Generator().manual_seed(0))

    def nll(lp, ent, mb):
        return -lp.sum() / lp.numel(), {}

    model.train_step([{"tokens": tokens}], nll)
    model.save_checkpoint(f"{tmp}/ckpt")
    after_save = model.train_step([{"tokens": tokens}], nll)["loss"]
    fresh = TrainableModel("policy", cfg.policy, cfg.optimizer.policy, ctx)
    fresh.load_checkpoint(f"{tmp}/ckpt", load_optimizer=True)
    resumed = fresh.train_step([{"tokens": tokens}], nll)["loss"]
    return {"dtypes": sorted(str(d) for d in dtypes), "after_save": after_save, "resumed": resumed}


def test_bf16_model_has_only_bf16_params_and_resumes_its_optimizer_exactly(tmp_path):
    (out,) = run_distributed(_train_save_load, world_size=1, args=(str(tmp_path),), timeout=300)
    assert out["dtypes"] == ["torch.bfloat16"]
    assert out["resumed"] == out["after_save"]
