"""Weight-sync stage, embedded engine: copy the stream straight into the engine's modules (same process)."""

from __future__ import annotations

from typing import Iterable

import torch

from megatron_rlvr.rollout.engine import InProcessReceiver
from megatron_rlvr.weight_sync.base import WeightTransport, detached, nbytes


class InProcessCopy(WeightTransport):
    """Tensors go one at a time into `engine.load_weights` (strict about names and shapes; no staging copy
    beyond the one logical tensor the export stream holds)."""

    kind = "inprocess"

    def __init__(self, engine: InProcessReceiver):
        if not isinstance(engine, InProcessReceiver):
            raise TypeError(f"InProcessCopy needs an engine with load_weights (the embedded engine), got "
                            f"{type(engine).__name__}")
        self.engine = engine

    def push(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
             flush_cache: bool = True) -> int:  # the embedded engine keeps no prefix cache: nothing to flush
        sizes: list[int] = []

        def counted():
            for name, t in detached(named_tensors):
                sizes.append(nbytes(t))
                yield name, t

        self.engine.load_weights(model, counted())
        return sum(sizes)
