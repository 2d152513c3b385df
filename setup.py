"""megatron-rlvr: RL with verifiable rewards for Qwen3 policies on Megatron-Core, with IAC + DLC."""
from setuptools import find_packages, setup

# Import names: `megatron_rlvr` for the framework and `megatron_rlvr.kernels` for the top-level `kernels/`
# folder. There is deliberately no top-level `kernels` module: SGLang depends on an unrelated PyPI package
# of that name.
packages = find_packages(include=["megatron_rlvr", "megatron_rlvr.*"])
kernel_packages = ["megatron_rlvr.kernels"] + [
    "megatron_rlvr.kernels." + p for p in find_packages(where="kernels")
]

setup(
    name="megatron-rlvr",
    version="0.1.0",
    description="RLVR for Qwen3 on Megatron-Core with inverse-success and distribution-level calibration",
    python_requires=">=3.10",
    packages=packages + kernel_packages,
    package_dir={"megatron_rlvr.kernels": "kernels"},
    package_data={"megatron_rlvr": ["configs/*.yaml", "tasks/data/*"]},
    install_requires=[
        "torch>=2.6",
        "megatron-core==0.16.1",
        "triton>=3.2",
        "transformers>=4.56",
        "safetensors",
        "pyyaml",
        "rich",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "psutil",  # dist-checkpointing needs it; without it a 2-rank save hangs (MEGATRON-NOTES.md)
        "numpy",
        "math-verify",
        "pyarrow",
        "nemo_run",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout"],
        "wandb": ["wandb"],
        "sglang": ["sglang==0.5.17"],
        "te": ["transformer-engine[pytorch]"],
        "apex": ["apex"],
    },
    entry_points={"console_scripts": ["megatron-rlvr=megatron_rlvr.cli:main"]},
)
