"""Import-only stand-in for `sgl_kernel`, for SGLang's CPU engine in the test environment only.

Why: SGLang's CPU path imports names from `sgl_kernel` at module level, but the CPU build of those ops is
not on PyPI, and for the Qwen3 / DLC model on `attention_backend="torch_native"` none of them is called
(shared/SGLANG-NOTES.md). Every attribute is a placeholder that raises when called, so a code path that
really needs a kernel fails loudly instead of computing something wrong.

This folder joins the import path only when `import sgl_kernel` fails (tests/sglang/conftest.py), so it
never shadows a real installation.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

IS_IMPORT_ONLY_STUB = True
__version__ = "0.0.0+import-only-stub"


class _Unavailable:
    """A name SGLang imports but must not call on CPU."""

    def __init__(self, qualname: str):
        self._qualname = qualname

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(
            f"{self._qualname} was called, but sgl_kernel is the import-only test stand-in "
            "(tests/sglang/_sgl_kernel_stub); install the real sgl-kernel / sglang-kernel to run this path"
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable(f"{self._qualname}.{name}")

    def __repr__(self) -> str:
        return f"<unavailable {self._qualname}>"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable(f"sgl_kernel.{name}")


class _StubSubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `sgl_kernel.<anything>` submodules as stand-ins of the same kind."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("sgl_kernel."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = lambda name, _q=spec.name: (  # type: ignore[attr-defined]
            _Unavailable(f"{_q}.{name}") if not name.startswith("__") else (_ for _ in ()).throw(AttributeError(name))
        )
        return mod

    def exec_module(self, module):
        return None


sys.meta_path.append(_StubSubmoduleFinder())
