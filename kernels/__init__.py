"""Fused GPU kernels of megatron-rlvr (import name ``megatron_rlvr.kernels``).

``dlc_sample``: one-pass DLC sampling from softmax((z_policy - lam * z_memory) / T) (docs/ALGORITHMS.md, "The
fused DLC sampler"), laid out as Triton kernel (``dlc_sample_kernel``), launcher (``dlc_sample``) and float32
PyTorch reference (``dlc_sample_reference``), plus its vocabulary-parallel form (``dlc_sample_vocab_parallel``).
"""

from .dlc_sample_launcher import dlc_sample
from .dlc_sample_args import DLCInvalidRowError, DLCSampleOutput
from .dlc_sample_reference import dlc_sample_reference
from .dlc_vocab_parallel import dlc_sample_vocab_parallel

__all__ = [
    "DLCInvalidRowError",
    "DLCSampleOutput",
    "dlc_sample",
    "dlc_sample_reference",
    "dlc_sample_vocab_parallel",
]
