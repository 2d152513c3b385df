"""Weight-sync stage: stream both models to the engines, and pick the transport once at start-up.

Gathering a TP/PP-sharded model is collective: every rank of a model's TP/PP groups iterates its stream, and each
such rank receives the identical full stream (`qwen3.live.export_hf_tensors`). So with one engine per rollout
group, every rank that hosts an engine hands its own copy of the stream to its own engine, and no rank waits for
another's push; ranks without an engine (transport None) only take part in the gathers.
"""

from __future__ import annotations

from typing import Optional

from megatron_rlvr.weight_sync.base import WeightTransport


def build_transport(engine, cfg=None, *, shapes: Optional[dict] = None,
                    bucket_mb: Optional[int] = None) -> Optional[WeightTransport]:
    """The transport for `engine` (None: this rank hosts no engine): in-process copy for the embedded engine,
    broadcast for attached servers in dedicated placement, tensor handles for everything else SGLang."""
    from megatron_rlvr.rollout.engine import BroadcastReceiver, InProcessReceiver
    from megatron_rlvr.weight_sync.broadcast import Broadcast
    from megatron_rlvr.weight_sync.inprocess import InProcessCopy
    from megatron_rlvr.weight_sync.tensor import TensorBuckets

    if engine is None:
        return None
    if isinstance(engine, InProcessReceiver):
        return InProcessCopy(engine)
    if cfg is not None:
        shapes = shapes or {"policy": cfg.policy.shape(), "memory": cfg.memory.shape()}
        bucket_mb = bucket_mb or cfg.rollout.weight_bucket_mb
    bucket_bytes = int(bucket_mb or 512) << 20
    dedicated = getattr(engine, "server_urls", None) and getattr(engine, "placement", "") == "dedicated"
    if dedicated and isinstance(engine, BroadcastReceiver):
        # Servers on their own nodes cannot map this process's tensors: weights go over a process group.
        return Broadcast(engine, shapes, bucket_bytes)
    return TensorBuckets(engine, shapes, bucket_bytes)


def push_weights(transport: Optional[WeightTransport], models: dict) -> int:
    """Stream every model in `models` (name -> TrainableModel) through `transport`; returns the bytes this rank
    pushed (into its own engine; 0 on a rank without one).

    An engine that dies mid-push (RolloutEngineError) must not leave the other ranks waiting in a gather: this rank
    drains its stream to the end, and then every rank raises `EngineDied` together (the trainer restarts the
    engine and pushes again).
    """
    from megatron_rlvr.qwen3.live import export_hf_tensors
    from megatron_rlvr.rollout.engine import EngineDied, RolloutEngineError, any_rank_failed

    pushed, failure = 0, None
    last = len(models) - 1
    for i, (name, model) in enumerate(models.items()):
        with model.ctx.layout(model.name):  # the gathers run over this model's own TP/PP groups
            stream = export_hf_tensors(model.model_chunks, model.shape)
            if transport is not None and failure is None:
                try:
                    # One prefix-cache flush per push of both models, after the last: no rollout runs between
                    # the two models' pushes, and each flush costs the engine an allocator flush / gc pass.
                    pushed += transport.push(name, stream, flush_cache=i == last)
                except RolloutEngineError as e:
                    failure = e
            for _ in stream:  # take part in the collective gathers (the rest of it, after a failure)
                pass
    if any_rank_failed(failure is not None):
        raise EngineDied(failure is not None, failure)
    return pushed
