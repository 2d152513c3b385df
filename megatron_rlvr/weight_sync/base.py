"""Weight-sync stage: what every transport is, and the byte-bounded buckets the out-of-process ones send."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator

import torch


class WeightTransport(ABC):
    """Moves one model's (Hugging Face name, tensor) stream into a rollout engine."""

    #: short name for logs and metrics ("inprocess", "tensor", "broadcast")
    kind: str = ""

    @abstractmethod
    def push(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
             flush_cache: bool = True) -> int:
        """Load `model` ("policy" or "memory") from the stream into the engine; returns the bytes moved.

        `flush_cache=False` leaves the engine's prefix cache (KV of the old weights) for a later push to flush:
        `push_weights` flushes once, after the last model. A flush is not free: SGLang's flush empties its allocator
        cache on a GPU and runs a full gc pass on CPU (0.29 s each on this project's CPU test engine, which made
        two flushes 63% of a tiny CPU run's step)."""

    def close(self) -> None:
        """Release what the transport holds (a process group); the engine itself is shut down by its owner."""


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list]:
    """Group tensors, in order, into lists of at most `bucket_bytes` (a larger single tensor is its own bucket):
    one message per bucket bounds the transient memory of a push to about one bucket."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket, size = [], 0
    for name, t in named_tensors:
        if bucket and size + nbytes(t) > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes(t)
    if bucket:
        yield bucket


def detached(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    # Live parameters (TP=1 streams hand them out unchanged) carry autograd state, which engines in other
    # processes (SGLang) refuse to receive.
    for name, t in named_tensors:
        yield name, t.detach()
