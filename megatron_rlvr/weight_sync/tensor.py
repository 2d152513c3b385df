"""Weight-sync stage, colocated SGLang: buckets of tensor handles (`update_weights_from_tensor`).

SGLang receives a bucket as serialized CUDA-IPC handles (shared memory on CPU), so no bytes are copied between
processes on a GPU: the engine maps the trainer's tensor and copies it into its own weights. Generation is paused
around the push (running requests are retracted) and the prefix cache flushed after it, since cached KV belongs
to the old weights. Names are the DLC model's `<model>.<HF name>`, checked by the converter's name map first.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from megatron_rlvr.rollout.engine import TensorReceiver
from megatron_rlvr.weight_sync.base import WeightTransport, buckets, detached, nbytes


class TensorBuckets(WeightTransport):
    kind = "tensor"

    def __init__(self, engine: TensorReceiver, shapes: Optional[dict] = None, bucket_bytes: int = 512 << 20):
        if not isinstance(engine, TensorReceiver):
            raise TypeError(f"TensorBuckets needs an engine with receive_tensors (SGLang), got "
                            f"{type(engine).__name__}")
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
        self.engine, self.shapes, self.bucket_bytes = engine, dict(shapes or {}), int(bucket_bytes)

    def push(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
             flush_cache: bool = True) -> int:
        from megatron_rlvr.rollout.sglang.protocol import dlc_param_names

        # Validate the model name before pausing: a typo must not leave generation paused.
        stream = dlc_param_names(model, detached(named_tensors), self.shapes.get(model))
        first = next(stream, None)
        pushed = 0
        self.engine.pause_generation()
        try:
            if first is not None:
                for bucket in buckets(_chain(first, stream), self.bucket_bytes):
                    self.engine.receive_tensors(bucket)
                    pushed += sum(nbytes(t) for _, t in bucket)
            if flush_cache:
                self.engine.flush_cache()
        finally:
            self.engine.continue_generation()
        return pushed


def _chain(first, rest):
    yield first
    yield from rest
