"""Weight-sync stage, dedicated SGLang servers: broadcast over one process group (`update_weights_from_distributed`).

Servers on other hosts cannot map the trainer's tensors, so at start-up trainer rank 0 and every rank of every
attached server join one group (NCCL when the trainer has a GPU, gloo otherwise): the trainer is group rank 0,
server k's ranks follow the earlier servers' (`BroadcastReceiver.weight_group_ranks`). Each bucket is announced
to all servers (names, dtypes, shapes) and then broadcast tensor by tensor from rank 0; every server rank receives
the full tensors and keeps its own tensor-parallel part, exactly as the tensor path does.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from megatron_rlvr.rollout.engine import BroadcastReceiver, RolloutEngineError
from megatron_rlvr.weight_sync.base import WeightTransport, buckets, detached, nbytes

logger = logging.getLogger(__name__)


class WeightSyncError(RolloutEngineError):
    """The weight-sync group could not be formed, or a server failed to receive a bucket."""


class Broadcast(WeightTransport):
    """Joins the group at construction (servers and trainer rendezvous together), then broadcasts every push."""

    kind = "broadcast"

    def __init__(self, engine: BroadcastReceiver, shapes: Optional[dict] = None, bucket_bytes: int = 512 << 20,
                 master_address: Optional[str] = None, backend: Optional[str] = None, timeout_s: float = 600.0):
        if not isinstance(engine, BroadcastReceiver):
            raise TypeError(f"Broadcast needs an engine with receive_broadcast (attached SGLang servers), got "
                            f"{type(engine).__name__}")
        self.engine, self.shapes, self.bucket_bytes = engine, dict(shapes or {}), int(bucket_bytes)
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device(
            "cpu")
        # The servers must reach this address: the launcher sets MASTER_ADDR to the first training node.
        self.address = master_address or os.environ.get("MASTER_ADDR") or socket.gethostname()
        with socket.socket() as sock:  # a free port on this host for the group's rendezvous
            sock.bind(("", 0))
            self.port = sock.getsockname()[1]
        # A fresh name per connection: servers outlive trainers (a resumed run connects again), and a name the
        # server still holds belongs to the dead trainer's group.
        self.group_name = f"dlc_weight_sync_{socket.gethostname()}_{os.getpid()}_{self.port}"
        self.ranks = engine.weight_group_ranks()
        self.world_size = 1 + sum(self.ranks)
        self.group = self._rendezvous(timeout_s)
        logger.info("weight sync: %s group of %d ranks (trainer + %s) via %s:%d", self.backend, self.world_size,
                    self.ranks, self.address, self.port)

    def _rendezvous(self, timeout_s: float):
        from sglang.srt.utils.common import init_custom_process_group

        errors: list[BaseException] = []

        def servers_join() -> None:
            try:
                self.engine.join_weight_group(self.address, self.port, self.world_size, self.group_name, self.backend)
            except BaseException as e:  # reported below, after the rendezvous gave up or completed
                errors.append(e)

        th = threading.Thread(target=servers_join, daemon=True)
        th.start()
        try:
            group = init_custom_process_group(
                backend=self.backend, init_method=f"tcp://{self.address}:{self.port}", world_size=self.world_size,
                rank=0, group_name=self.group_name, timeout=timedelta(seconds=timeout_s))
        except Exception as e:
            raise WeightSyncError(
                f"weight-sync group of {self.world_size} ranks at {self.address}:{self.port} ({self.backend}) "
                f"failed: {e}; servers said: {errors or 'nothing'}. The servers must reach this host at that "
                "address (set MASTER_ADDR to an address they can reach)") from e
        finally:
            th.join(timeout=timeout_s)
        if errors:
            raise WeightSyncError(f"SGLang servers could not join the weight-sync group: {errors}")
        return group

    def push(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
             flush_cache: bool = True) -> int:
        from megatron_rlvr.rollout.sglang.protocol import dlc_param_names

        stream = dlc_param_names(model, detached(named_tensors), self.shapes.get(model))
        pushed = 0
        self.engine.pause_generation()
        try:
            for bucket in buckets(stream, self.bucket_bytes):
                pushed += self._send(bucket)
            if flush_cache:
                self.engine.flush_cache()
        finally:
            self.engine.continue_generation()
        return pushed

    def _send(self, bucket: list) -> int:
        names = [n for n, _ in bucket]
        dtypes = [str(t.dtype).replace("torch.", "") for _, t in bucket]
        shapes = [list(t.shape) for _, t in bucket]
        errors: list[BaseException] = []

        def receive() -> None:  # the servers block in their receive until the broadcasts below complete
            try:
                self.engine.receive_broadcast(names, dtypes, shapes, self.group_name)
            except BaseException as e:
                errors.append(e)

        th = threading.Thread(target=receive, daemon=True)
        th.start()
        for _, t in bucket:
            dist.broadcast(t.to(self.device).contiguous(), src=0, group=self.group)
        th.join()
        if errors:
            raise WeightSyncError(f"update_weights_from_distributed failed: {errors[0]}") from errors[0]
        return sum(nbytes(t) for _, t in bucket)

    def close(self) -> None:
        if self.group is not None:
            try:
                dist.destroy_process_group(self.group)
            except Exception:  # the servers may already be gone; nothing else holds the group
                pass
            self.group = None
