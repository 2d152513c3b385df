"""Session-wide test set-up.

Triton decides between compiled and interpreted functions when it is first imported. On a machine without a GPU,
import it (and the kernels) once with TRITON_INTERPRET=1 before any test module can import it compiled, so the
kernel tests run their Triton programs in this process (tests/kernels/conftest.py); the variable is restored at
once, so every other test keeps `dlc_sample`'s CPU reference path.
"""

import importlib.util
import os
import sys

import torch

# Not in the SGLang venv: it runs only tests/sglang, and SGLang's own Triton code should stay compiled there.
if "triton" not in sys.modules and not torch.cuda.is_available() and importlib.util.find_spec("sglang") is None:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton  # noqa: F401
    import megatron_rlvr.kernels  # noqa: F401
    import megatron_rlvr.kernels.token_stats_kernel  # noqa: F401  (the update stage's fused log-prob kernels)

    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous
