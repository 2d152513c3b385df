"""Distributed: torch.distributed + Megatron `parallel_state` for two models with different layouts.

The policy and the memory model of DLC share one world of ranks but may use different tensor/pipeline layouts
(the memory model is small: e.g. policy TP=2 x PP=2 while the memory model runs TP=1 with DP=4). megatron-core
0.16.1 keeps its process groups in module globals of ``megatron.core.parallel_state``; its models accept a
``pg_collection`` but DDP buffers, grad finalisation, grad clipping, the schedules' defaults, vocab-parallel
cross-entropy and dist-checkpointing still read the globals in places. So each layout's groups are built once
with ``initialize_model_parallel`` and :meth:`ParallelContext.layout` swaps the complete set of globals in and out:

    ctx = init_distributed(cfg)                      # builds the policy's and the memory model's groups
    with ctx.layout("memory"):
        ... build / run / checkpoint the memory model ...

Everything touching a model (build, forward, step, checkpoint) must run inside its layout;
``megatron_rlvr.update.trainable.TrainableModel`` does this itself. Models built inside a layout also capture
that layout's groups in their own ``pg_collection``. All ranks must enter the same layouts in the same order
(as for any collective).

Backends: NCCL when CUDA is available (one GPU per local rank), gloo otherwise. Rank information comes from the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without it a single-process world
is created on a free local port. The code is device-agnostic; the CPU/gloo path is tested in CI, the NCCL path in
tests/gpu/test_parallel_gpu.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Union

import numpy as np
import torch
import torch.distributed as dist

from megatron_rlvr.distributed import cpu_compat

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import ParallelConfig, RunConfig

_STATE_NAME = re.compile(r"^_[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class Layout:
    """One model's parallel layout over the whole world: tp * pp * dp == world_size."""

    tp: int
    pp: int
    vpp: int
    dp: int
    distributed_optimizer: bool


def _parallel_state():
    from megatron.core import parallel_state

    return parallel_state


def _state_names() -> list[str]:
    ps = _parallel_state()
    return [n for n, v in vars(ps).items() if _STATE_NAME.match(n) and not callable(v)]


def _snapshot() -> dict:
    ps = _parallel_state()
    return {n: getattr(ps, n) for n in _state_names()}


def _restore(state: dict) -> None:
    ps = _parallel_state()
    for n, v in state.items():
        setattr(ps, n, v)


class ParallelContext:
    """The initialised world: rank/device facts and one Megatron group set per named layout."""

    def __init__(self, layouts: dict[str, Layout], states: dict[str, dict], pristine: dict, device: torch.device):
        self.layouts = layouts
        self._states = states
        self._pristine = pristine
        self.device = device
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = dist.get_backend()
        self.active: Optional[str] = None

    def _activate(self, name: Optional[str]) -> None:
        if self.active is not None:
            self._states[self.active] = _snapshot()  # keep whatever Megatron cached while it was active
        _restore(self._pristine if name is None else self._states[name])
        self.active = name

    @contextlib.contextmanager
    def layout(self, name: str) -> Iterator[Layout]:
        """Make layout `name`'s process groups Megatron's current ones for the body (nests; restores on exit)."""
        if name not in self.layouts:
            raise KeyError(f"unknown parallel layout {name!r}; this context has {sorted(self.layouts)}")
        previous = self.active
        if previous == name:
            yield self.layouts[name]
            return
        self._activate(name)
        try:
            yield self.layouts[name]
        finally:
            self._activate(previous)

    def use(self, name: str) -> None:
        """Make layout `name` current until the next switch (for scripts that only ever use one model)."""
        if name not in self.layouts:
            raise KeyError(f"unknown parallel layout {name!r}; this context has {sorted(self.layouts)}")
        self._activate(name)

    def destroy(self) -> None:
        """Forget the Megatron groups and tear down torch.distributed (ends this context)."""
        self._activate(None)
        self._states.clear()
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_torch_distributed(backend: Optional[str], timeout_minutes: int) -> torch.device:
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    backend = backend or ("nccl" if cuda else "gloo")
    timeout = timedelta(minutes=timeout_minutes)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    else:
        # A single process: always a fresh port, passed directly rather than through the environment. An inherited
        # MASTER_PORT (e.g. from a parent that initialised its own group) may still be bound, and exporting ours
        # would hand the same stale port to every child process (seen in CI: EADDRINUSE in all trainer runs).
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                timeout=timeout)
    return device


def _to_layout(name: str, par: ParallelConfig, world_size: int) -> Layout:
    mp = par.tp * par.pp
    if world_size % mp:
        raise ValueError(
            f"{name}.parallel: tp * pp = {par.tp} * {par.pp} = {mp} does not divide the world size {world_size}; "
            f"launch a multiple of {mp} ranks or change {name}.parallel.tp / .pp"
        )
    return Layout(par.tp, par.pp, par.vpp, world_size // mp, par.distributed_optimizer)


def init_distributed(
    cfg: Union[RunConfig, Mapping[str, ParallelConfig]],
    backend: Optional[str] = None,
    timeout_minutes: int = 30,
    default: Optional[str] = None,
) -> ParallelContext:
    """Initialise torch.distributed and one Megatron group set per model layout.

    `cfg` is a RunConfig (layouts "policy" and "memory" from ``cfg.policy.parallel`` / ``cfg.memory.parallel``)
    or a mapping name -> ParallelConfig. Every rank must pass the same layouts. After the call, layout `default`
    (the first layout when None) is current. Installs the CPU redirections when there is no GPU.
    """
    cpu_compat.activate()
    if isinstance(cfg, Mapping):
        pars = dict(cfg)
    else:  # a RunConfig
        pars = {"policy": cfg.policy.parallel, "memory": cfg.memory.parallel}
    if not pars:
        raise ValueError("init_distributed needs at least one layout")
    ps = _parallel_state()
    if ps.model_parallel_is_initialized():
        raise RuntimeError("megatron parallel_state is already initialised; call ParallelContext.destroy() first")
    device = _init_torch_distributed(backend, timeout_minutes)
    world = dist.get_world_size()
    layouts = {name: _to_layout(name, par, world) for name, par in pars.items()}

    pristine = _snapshot()
    states: dict[str, dict] = {}
    built: dict[Layout, dict] = {}
    for name, lay in layouts.items():  # the same order on every rank: group creation is collective
        key = Layout(lay.tp, lay.pp, lay.vpp, lay.dp, False)
        if key not in built:
            _restore(pristine)
            ps.initialize_model_parallel(
                tensor_model_parallel_size=lay.tp,
                pipeline_model_parallel_size=lay.pp,
                virtual_pipeline_model_parallel_size=lay.vpp if lay.vpp > 1 else None,
                distributed_timeout_minutes=timeout_minutes,
            )
            built[key] = _snapshot()
        states[name] = built[key]
    _restore(pristine)
    ctx = ParallelContext(layouts, states, pristine, device)
    ctx.use(default or next(iter(layouts)))
    return ctx


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch; on GPU also Megatron's tensor-parallel CUDA RNG tracker.

    Call inside the layout of the model being built (the tracker's tensor-parallel stream depends on the TP rank).
    On CPU the tracker is Megatron's no-op inference tracker (cpu_compat) and weights come from torch's default
    generator, which ``use_cpu_initialization`` draws identically on every TP layout.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """Ask torch for deterministic kernels (bit-reproducible CPU runs; on GPU needs CUBLAS_WORKSPACE_CONFIG)."""
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
