"""Rollout stage, token sampling: launching a Triton kernel with little host time (used by ``dlc_sample``).

``kernel[grid](*args)`` re-binds and re-specialises every argument on each call (Triton's JIT looks at every
tensor's dtype and alignment and at every int's value, builds a cache key, then launches): about 40 arguments
cost tens of microseconds, which an eager decode step pays once per token. ``CachedKernel`` runs the JIT once per
*caller-side* key, keeps the ``CompiledKernel`` it returns, and afterwards hands the positional arguments
straight to that kernel's C launcher, with pointers given as plain integers (the launcher then skips its own
``data_ptr()`` call and driver pointer query per tensor).

The caller's key must determine Triton's specialisation of the call (see ``specialization_class``): dtypes of
pointer arguments, 16-byte alignment of every pointer, and for every int that Triton specialises, whether it is 1,
divisible by 16 and in int32 range. Anything not covered, a launch hook (profilers use them), an interpreter run,
``MEGATRON_RLVR_FAST_LAUNCH=0`` or a Triton whose handle lacks the attributes used here take the normal JIT path.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Hashable, Optional, Sequence

import torch

_MISSING = object()


# os.environ.get costs ~0.6 us per name (it encodes the key and builds a str each time), and this is read on every
# eager launch. On POSIX CPython os.environ keeps its bytes mapping in ``_data``, updated by every os.environ write
# (monkeypatch.setenv too), so a look-up there sees the same values for a few nanoseconds.
_ENV_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None


def _env_is(name: bytes, value: bytes, default: bytes) -> bool:
    """os.environ.get(name, default) == value, for ASCII name and values."""
    if _ENV_BYTES is not None:
        return _ENV_BYTES.get(name, default) == value
    return os.environ.get(name.decode(), default.decode()) == value.decode()


def fast_launch_enabled() -> bool:
    """False under the Triton interpreter or with MEGATRON_RLVR_FAST_LAUNCH=0 (the JIT path on every call)."""
    env = _ENV_BYTES  # _env_is spelled out: this runs on every launch
    if env is not None:
        return env.get(b"TRITON_INTERPRET", b"0") != b"1" and env.get(b"MEGATRON_RLVR_FAST_LAUNCH", b"1") != b"0"
    return not _env_is(b"TRITON_INTERPRET", b"1", b"0") and not _env_is(b"MEGATRON_RLVR_FAST_LAUNCH", b"0", b"1")


def specialization_class(value: Any) -> Hashable:
    """What Triton's JIT specialises a (non-constexpr, specialised) argument on; equal classes share a kernel.

    Tensors: dtype and whether the data pointer is 16-byte aligned; ints: the value 1 (turned into a constant),
    divisibility by 16 and the int32 / int64 range; floats and bools: only their type. Mirrors
    ``native_specialize_impl`` of Triton 3.4-3.6 (checked against it in tests/kernels/test_fast_launch.py).
    """
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        if value == 1:
            return 1
        return (value % 16 == 0, -(1 << 31) <= value < (1 << 31))
    return type(value)


_RUNTIME_KNOBS: list = []


def _hooks_active() -> bool:
    """True while a launch hook is installed (Triton 3.6 keeps empty hook chains, older versions None)."""
    if not _RUNTIME_KNOBS:
        from triton import knobs

        _RUNTIME_KNOBS.append(knobs.runtime)
    runtime = _RUNTIME_KNOBS[0]
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    return bool((enter is not None and getattr(enter, "calls", True)) or
                (leave is not None and getattr(leave, "calls", True)))


class CachedKernel:
    """One ``@triton.jit`` kernel with its compiled handles kept per caller key."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self._handles: dict = {}
        self._stream: Optional[Callable[[int], int]] = None
        self.fast_launches = 0  # counters for tests and the benchmark
        self.jit_launches = 0
        self.disabled: Optional[str] = None  # why the fast path is off for this kernel, after a failed launch

    def clear(self) -> None:
        """Forget the compiled handles (after a launch-setting change, e.g. in the benchmark's sweep)."""
        self._handles.clear()

    def handle(self, key: Hashable) -> Optional[Any]:
        """The compiled kernel for ``key`` if the fast path may launch it now, else None."""
        h = self._handles.get(key)
        if h is None or not fast_launch_enabled() or _hooks_active():
            return None
        return h

    def launch(self, handle: Any, grid: Sequence[int], args: Sequence[Any], device: int) -> bool:
        """Launch a handle from ``handle(key)`` on the current device (its index given); ``args``: every parameter
        in signature order, constexprs too. False if this Triton's launcher refused the call (nothing was
        launched; the caller takes the JIT path, and so does every later call of this kernel)."""
        if self._stream is None:
            from triton.runtime.driver import driver

            self._stream = driver.active.get_current_stream
        try:
            # The C launcher's own layout: grid, stream, function, packed metadata, launch metadata and the
            # enter/exit hooks (None: none are installed, see handle()), then the kernel's parameters.
            handle.run(grid[0], grid[1], grid[2], self._stream(device), handle.function,
                       handle.packed_metadata, None, None, None, *args)
        except (TypeError, ValueError, OverflowError, SystemError) as exc:  # argument parsing: before any launch
            self.disabled = f"{type(exc).__name__}: {exc}"
            self._handles.clear()
            warnings.warn(f"dlc_sample: the fast launch of {getattr(self.fn, '__name__', self.fn)} failed "
                          f"({self.disabled}); using Triton's normal launch from now on", RuntimeWarning)
            return False
        self.fast_launches += 1
        return True

    def launch_jit(self, key: Optional[Hashable], grid: Sequence[int], args: Sequence[Any], constexprs: dict,
                   num_warps: int) -> None:
        """The normal ``kernel[grid](...)`` launch; keeps the returned compiled kernel under ``key`` (if given)."""
        compiled = self.fn[tuple(grid)](*args, **constexprs, num_warps=num_warps)
        self.jit_launches += 1
        if key is not None and self.disabled is None and fast_launch_enabled() and self._usable(compiled):
            self._handles[key] = compiled

    @staticmethod
    def _usable(compiled: Any) -> bool:
        """A compiled kernel whose launcher this module knows how to call (Triton 3.x CompiledKernel)."""
        if compiled is None or type(compiled).__name__ != "CompiledKernel":
            return False
        try:
            return callable(compiled.run) and getattr(compiled, "function", None) is not None and \
                getattr(compiled, "packed_metadata", _MISSING) is not _MISSING
        except Exception:  # noqa: BLE001 - a handle that cannot load its launcher is simply not used
            return False
