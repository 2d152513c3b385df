"""Rollout stage: the one declaration of what a rollout engine offers the trainer.

Every engine (the embedded one, a colocated SGLang engine, attached SGLang servers) implements `RolloutEngine`:
generation, memory release around training, shutdown. How new weights reach an engine is not part of it: each
engine offers the *receiving end* of one transport (one of the receiver protocols below), and the weight-sync
stage (`megatron_rlvr.weight_sync`) picks the matching transport once at start-up and drives it. So a change to
how weights travel touches `weight_sync/` and, at most, the receiving method of one engine.

    engine.generate(prompts, SamplingParams(lam=0.3, seed=s, seed_offset=k))   # Generation records, in order
    engine.release_memory(); ...train...; engine.resume_memory()                 # colocated GPU engines
    engine.shutdown()
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol, Sequence, runtime_checkable

import torch

from megatron_rlvr.rollout.types import Generation, SamplingParams


def served_memory_shape(cfg):
    """The memory model's Qwen3 shape an engine of run config `cfg` decodes beside the policy, or None with DLC off
    (no memory model is trained or pushed then, so no engine holds one)."""
    return cfg.memory.shape() if cfg.dlc.enabled else None


class RolloutEngineError(RuntimeError):
    """An engine died or failed a request: the trainer may restart it (`rollout.max_engine_restarts`)."""


class EngineDied(RuntimeError):
    """Raised on every rank when any rank's engine failed during a collective stage (rollout, weight push), so
    all ranks leave the stage together; `here` says whether this rank's own engine is the one that failed."""

    def __init__(self, here: bool, cause: Optional[BaseException]):
        super().__init__(f"rollout engine failure ({'this rank' if here else 'another rank'}): {cause}")
        self.here, self.cause = here, cause


def any_rank_failed(failed_here: bool) -> bool:
    """True on every rank if `failed_here` is True on any (one MAX all-reduce; no collective on one process)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return failed_here
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([int(failed_here)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a rollout engine, whatever runs it."""

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        """One response per prompt, in order (repeat a prompt for G responses). Request i draws its tokens from
        the RNG stream (seed of `sampling.seed` and global index `sampling.seed_offset + i`, decode position), so
        the same request gives the same response on whichever engine, in whichever batch, it runs."""

    def release_memory(self) -> Optional[bool]:
        """Give accelerator memory (weights, KV cache) back while the trainer trains; a no-op where none is held.
        Returns True when memory was given back (the trainer then returns its own cached blocks before the
        engine resumes), False or None for the no-op."""

    def resume_memory(self) -> None:
        """Take the memory released by `release_memory` again (weights are pushed afresh after it)."""

    def shutdown(self) -> None:
        """Release the engine's resources; later calls fail."""


# ---------------------------------------------------------------------------------------- receiving ends
@runtime_checkable
class InProcessReceiver(Protocol):
    """An engine in the trainer's own process: tensors are copied into its modules."""

    def load_weights(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (Hugging Face name, tensor) pairs into `model` ("policy" or "memory"); strict about names/shapes."""


@runtime_checkable
class TensorReceiver(Protocol):
    """An engine on this host in another process (SGLang): tensors travel as CUDA-IPC / shared-memory handles."""

    def pause_generation(self) -> None: ...

    def continue_generation(self) -> None: ...

    def flush_cache(self) -> None: ...

    def receive_tensors(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """Load one bucket of (engine parameter name, tensor) pairs."""


@runtime_checkable
class BroadcastReceiver(Protocol):
    """Engines on other hosts (dedicated SGLang servers): tensors are broadcast over a process group that the
    trainer's rank 0 and every engine rank join."""

    def pause_generation(self) -> None: ...

    def continue_generation(self) -> None: ...

    def flush_cache(self) -> None: ...

    def weight_group_ranks(self) -> list[int]:
        """Ranks each server contributes to the weight-sync group, in server order."""

    def join_weight_group(self, address: str, port: int, world_size: int, group_name: str, backend: str) -> None:
        """Ask every server to join the group (blocks until the rendezvous completes; run it in a thread)."""

    def receive_broadcast(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                          group_name: str) -> None:
        """Have every server receive one bucket broadcast from group rank 0 (blocks until received)."""
