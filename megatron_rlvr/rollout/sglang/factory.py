"""Rollout stage: the SGLang engine's factory (registered as "sglang" in `megatron_rlvr.registry.ENGINES`)."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_rlvr.qwen3.shapes import get_preset


def build_engine(cfg, *, engine_index: int, device: torch.device, dtype: torch.dtype, tokenizer, run_dir: Path):
    """The SGLang engine of `cfg.rollout` with index `engine_index`, on `device` (and the next tp - 1 GPUs), or a
    client of `rollout.server_urls` (dedicated servers)."""
    from megatron_rlvr.rollout.engine import served_memory_shape
    from megatron_rlvr.rollout.sglang.engine import SGLangEngine
    from megatron_rlvr.rollout.sglang.model_dir import build_model_dir

    cuda = device.type == "cuda"
    dtype_name = str(dtype).removeprefix("torch.")
    model_path = None
    if not cfg.rollout.server_urls:
        # Dummy-initialised DLC model folder: the trainer pushes both models' real weights right after start. With
        # DLC off it has no memory stack (no memory model is trained or pushed: decoding one would be wasted work).
        memory = served_memory_shape(cfg)
        model_path = str(build_model_dir(Path(run_dir) / f"sglang_model_{engine_index}", get_preset(cfg.policy.preset),
                                         memory, tokenizer=tokenizer, dtype=dtype_name if cuda else "float32"))
    return SGLangEngine.from_config(cfg, model_path, engine_index=engine_index,
                                    base_gpu_id=device.index if cuda else None, dtype=dtype_name)
