"""Weight-sync stage: push both models' new weights to the rollout engine after every update.

Tensors travel with Hugging Face Qwen3 names produced by the converter's name map (`megatron_rlvr.convert`), so the
training -> rollout sync and the offline Hugging Face export can never disagree. Gathering a TP/PP-sharded model
is collective: every rank iterates the stream; only global rank 0 (where the engine lives) hands it on.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist

from megatron_rlvr.rollout.types import RolloutEngine


def push_weights(engine: Optional[RolloutEngine], models: dict) -> int:
    """Stream every model in `models` (name -> TrainableModel) to `engine`; returns the bytes pushed."""
    from megatron_rlvr.convert.live import export_hf_tensors

    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    pushed = 0
    for name, model in models.items():
        with model.ctx.layout(model.name):  # the gathers run over this model's own TP/PP groups
            stream = export_hf_tensors(model.model_chunks, model.shape)
            if rank0 and engine is not None:
                sizes: list[int] = []
                engine.update_weights(name, _counted(stream, sizes))
                pushed += sum(sizes)
            else:
                for _ in stream:  # take part in the collective gathers
                    pass
    return pushed


def _counted(stream, sizes: list[int]) -> Iterator[tuple[str, torch.Tensor]]:
    for hf_name, tensor in stream:
        sizes.append(tensor.numel() * tensor.element_size())
        # Live parameters (TP=1 streams hand them out unchanged) carry autograd state, which engines in other
        # processes (SGLang) refuse to receive.
        yield hf_name, tensor.detach()
