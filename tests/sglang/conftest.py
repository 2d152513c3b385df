"""Tests of the SGLang rollout engine (run in the SGLang venv: tools/setup_sglang_env.sh).

    .venv-sglang/bin/python -m pytest tests/sglang -q

One in-process SGLang engine (tiny random Qwen3 policy + smaller memory model, CPU) is shared by the whole
session: SGLang takes about a minute to start. References are transformers' Qwen3ForCausalLM with the same
weights, run without any cache.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_STUB = Path(__file__).with_name("_sgl_kernel_stub")


def _use_sgl_kernel_stub_if_needed() -> None:
    """Make `import sgl_kernel` succeed on CPU with the import-only stand-in, here and in SGLang's children.

    Only when no real sgl_kernel is importable, and appended at the end of the path, so a real installation
    always wins. SGLang spawns its scheduler processes, which inherit PYTHONPATH.
    """
    if importlib.util.find_spec("sgl_kernel") is not None:
        return
    sys.path.append(str(_STUB))
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(_STUB) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(parts + [str(_STUB)])


if importlib.util.find_spec("sglang") is None:
    pytest.skip("SGLang is not installed in this interpreter; run tests/sglang with .venv-sglang/bin/python "
                "(create it with tools/setup_sglang_env.sh)", allow_module_level=True)
_use_sgl_kernel_stub_if_needed()

import torch  # noqa: E402

from megatron_rlvr.qwen3.shapes import get_preset  # noqa: E402

POLICY_PRESET, MEMORY_PRESET = "tiny", "tiny-mem"


def hf_qwen3(shape, seed: int):
    """A transformers Qwen3ForCausalLM with random weights drawn from `seed` (float32, eval mode)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(**shape.to_hf_config_dict())
    model = Qwen3ForCausalLM(cfg).eval()
    # Larger-than-default weights make the tiny models' distributions peaked enough that greedy ties never
    # decide a comparison, and lambda visibly moves pi_cal.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08 if "embed" in name or "lm_head" in name else 0.05)
    return model


@pytest.fixture(scope="session")
def shapes():
    return get_preset(POLICY_PRESET), get_preset(MEMORY_PRESET)


@pytest.fixture(scope="session")
def hf_models(shapes):
    policy_shape, memory_shape = shapes
    return {"policy": hf_qwen3(policy_shape, 1), "memory": hf_qwen3(memory_shape, 2)}


@pytest.fixture(scope="session")
def transport(engine, shapes):
    """The colocated path's weight transport into the shared engine; 1 MiB buckets: updates arrive in several."""
    from megatron_rlvr.weight_sync import TensorBuckets

    policy_shape, memory_shape = shapes
    return TensorBuckets(engine, {"policy": policy_shape, "memory": memory_shape}, bucket_bytes=1 << 20)


@pytest.fixture(scope="session")
def engine(tmp_path_factory, shapes, hf_models):
    from megatron_rlvr.rollout.sglang import SGLangEngine, build_model_dir

    policy_shape, memory_shape = shapes
    path = build_model_dir(tmp_path_factory.mktemp("dlc_model"), policy_shape, memory_shape,
                           hf_models["policy"].state_dict(), hf_models["memory"].state_dict(), dtype="float32")
    # CPU everywhere but the GPU machine (tools/gpu_sglang.sh test), where the same checks run on CUDA in fp32.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    extra = {"log_level": "warning", "random_seed": 0}
    if device == "cuda":
        extra.update(dtype="float32", attention_backend="triton", mem_fraction_static=0.3)
    eng = SGLangEngine(str(path), policy_shape=policy_shape, memory_shape=memory_shape, device=device,
                       sglang=extra)
    yield eng
    eng.shutdown()
