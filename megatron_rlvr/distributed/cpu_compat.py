"""Distributed, CPU support: run megatron-core 0.16.1 on a machine without a GPU.

megatron-core assumes CUDA in a few dozen places: tensors created with a
literal ``device="cuda"`` or ``device=torch.cuda.current_device()``, ``torch.cuda.synchronize()`` calls, an assert
that gradients are ``torch.cuda.FloatTensor`` in grad clipping and the same type check when the optimizer wraps
its parameters. The math is device-agnostic, so on CPU we redirect just these calls:

* every loaded ``megatron.core.*`` module's global name ``torch`` is replaced by :class:`_CpuTorch`, a thin proxy
  of the real module whose tensor factories map a CUDA ``device`` to CPU (and drop ``pin_memory``) and whose
  ``torch.cuda`` answers ``current_device()`` with the CPU device and makes ``synchronize()`` a no-op. Code
  outside megatron-core never sees the proxy.
* grad clipping's scale step is replaced by a device-agnostic ``torch._foreach_mul_`` (same arithmetic).
* the optimizers' "is this a float tensor" checks run with CPU type names mapped to their CUDA names.
* the tensor-parallel RNG tracker is Megatron's inference tracker (``fork()`` is a no-op): ``use_cpu_initialization``
  draws full weights from the default generator, and Qwen3 has no dropout.

:func:`activate` is idempotent and does nothing when CUDA is available, so the same code runs unchanged on GPUs.
Call it before building models (``megatron_rlvr.distributed.parallel.init_distributed`` does).
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from typing import Any, Callable

import torch

_ACTIVE = False

# Modules on the training path that hold CUDA-only calls; importing them up front means their globals get patched
# even if nothing imported them yet. Every other already-loaded megatron.core module is patched too.
_MEGATRON_MODULES = (
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.timers",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.data",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.transformer.module",
    "megatron.core.transformer.utils",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.transformer_block",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer_param_scheduler",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.async_utils",
)

_FACTORIES = (
    "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "eye", "linspace",
)


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int means a CUDA ordinal in torch's factory functions.
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_factory(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)  # pinning needs a CUDA context and is pointless without a GPU
        return fn(*args, **kwargs)

    return wrapper


class _CpuCuda(types.SimpleNamespace):
    """``torch.cuda`` as megatron-core sees it on CPU; unknown attributes fall through to the real module."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(*args, **kwargs) -> None:
        return None

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _CpuTorch(types.ModuleType):
    """A proxy of the ``torch`` module for megatron-core's globals (see module docstring)."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CpuCuda()
        for name in _FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _cuda_type_names(fn: Callable) -> Callable:
    """Run `fn` with ``Tensor.type()`` reporting CPU float types under their CUDA names (optimizer type checks)."""
    original_type = torch.Tensor.type

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def cuda_named_type(self, *targs, **tkwargs):
            out = original_type(self, *targs, **tkwargs)
            if not targs and not tkwargs and isinstance(out, str) and self.device.type == "cpu":
                return out.replace("torch.", "torch.cuda.", 1)
            return out

        torch.Tensor.type = cuda_named_type
        try:
            return fn(*args, **kwargs)
        finally:
            torch.Tensor.type = original_type

    return wrapper


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad: bool = False) -> None:
    """Device-agnostic replacement of megatron's clip step: grads *= max_norm / (total_norm + 1e-6) if < 1."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def is_active() -> bool:
    """Whether the CPU redirections are installed in this process."""
    return _ACTIVE


def activate() -> bool:
    """Install the CPU redirections when no GPU is present. Idempotent. Returns whether they are active."""
    global _ACTIVE
    if torch.cuda.is_available():
        return False
    for name in _MEGATRON_MODULES:
        importlib.import_module(name)
    proxy = _CpuTorch()
    for name, mod in list(sys.modules.items()):
        if name.startswith("megatron.core") and mod is not None and getattr(mod, "torch", None) is torch:
            mod.torch = proxy
    if _ACTIVE:
        return True

    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer
    from megatron.core.tensor_parallel import random as tp_random

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    dist_opt = distrib_optimizer.DistributedOptimizer
    dist_opt._build_model_and_main_param_groups = classmethod(
        _cuda_type_names(dist_opt.__dict__["_build_model_and_main_param_groups"].__func__)
    )
    f16 = optimizer.Float16OptimizerWithFloat16Params
    f16.__init__ = _cuda_type_names(f16.__init__)
    # No CUDA generator to track: fork() becomes a no-op (weights come from the default CPU generator).
    tp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    _ACTIVE = True
    return True
