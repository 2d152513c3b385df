"""Fixtures for the kernel tests: run the Triton kernels on the CPU through TRITON_INTERPRET=1.

Triton decides between compiled and interpreted functions when ``@triton.jit`` runs, for its own standard
library too, i.e. when triton is first imported. On a machine without a GPU the root tests/conftest.py imports
triton (and the kernels) with TRITON_INTERPRET=1 and then restores the variable: other tests keep the CPU
reference path of ``dlc_sample``. If triton was already imported compiled by an earlier test module, the interpreter
tests of a module run once in a subprocess with the variable set, and each test reports that run's outcome.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]

def _interpreter_in_process() -> bool:
    from megatron_rlvr.kernels import dlc_sample_kernel

    return type(dlc_sample_kernel.dlc_stage1_kernel).__name__ == "InterpretedFunction"


_subprocess_runs: dict = {}


def _run_module_in_subprocess(path: str) -> subprocess.CompletedProcess:
    if path not in _subprocess_runs:
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(_REPO))
        _subprocess_runs[path] = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", path],
            cwd=_REPO, env=env, capture_output=True, text=True, timeout=900)
    return _subprocess_runs[path]


@pytest.fixture
def triton_interpreter(request, monkeypatch):
    """TRITON_INTERPRET=1 for one test, so ``dlc_sample`` on CPU tensors runs the Triton kernels."""
    if not _interpreter_in_process():
        run = _run_module_in_subprocess(str(request.path))
        if run.returncode != 0:
            pytest.fail(f"interpreter tests failed in their TRITON_INTERPRET=1 subprocess:\n{run.stdout[-6000:]}")
        pytest.skip("Triton was imported compiled in this process; this module passed in a TRITON_INTERPRET=1 "
                    "subprocess")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with warnings.catch_warnings():
        # The interpreter evaluates both sides of tl.where: 0 * -inf in a masked lane warns, harmlessly.
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        yield
