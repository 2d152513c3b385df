"""The SGLang engine starts with the attention backend the DLC model is tested with on each device, and the user's
`rollout.sglang` options always win (no SGLang needed: only the argument building is exercised here; the start
itself is covered by tests/sglang and, on a GPU, by tests/sglang/test_gpu_*.py)."""

from megatron_rlvr.rollout.sglang.engine import CPU_DEFAULTS, GPU_DEFAULTS, engine_args


def test_gpu_engines_default_to_the_tested_triton_attention_backend():
    args = engine_args("/m", "cuda", "colocated", {})
    assert args["attention_backend"] == GPU_DEFAULTS["attention_backend"] == "triton"
    assert args["enable_memory_saver"] is True


def test_cpu_engines_use_the_torch_native_backend_in_float32():
    args = engine_args("/m", "cpu", "colocated", {})
    assert args["attention_backend"] == CPU_DEFAULTS["attention_backend"] == "torch_native"
    assert args["dtype"] == "float32" and "enable_memory_saver" not in args


def test_the_users_sglang_options_override_the_defaults():
    args = engine_args("/m", "cuda", "dedicated", {"attention_backend": "fa3", "mem_fraction_static": 0.5})
    assert args["attention_backend"] == "fa3" and args["mem_fraction_static"] == 0.5
    assert args["enable_memory_saver"] is False


def test_engines_sleep_when_idle_unless_the_user_says_otherwise():
    # An idle SGLang scheduler otherwise spins a core beside the trainer's updates.
    for device in ("cuda", "cpu"):
        assert engine_args("/m", device, "colocated", {})["sleep_on_idle"] is True
    assert engine_args("/m", "cuda", "colocated", {"sleep_on_idle": False})["sleep_on_idle"] is False
