"""Qwen3 models: shape presets and the Megatron-Core side.

- ``presets``: Qwen3Shape, PRESETS, get_preset (pure data, no Megatron import).
- ``provider``: build_gpt_model / transformer_config / layer_spec (GPTModel for a Qwen3 shape).
- ``trainable``: TrainableModel (DDP + optimizer + pipeline schedule + dist-checkpointing), model_info.json I/O.
- ``cpu_compat``: redirects megatron-core's CUDA-only calls on machines without a GPU.

Submodules that import megatron are not imported here, so ``import megatron_rlvr.models`` stays cheap.
"""
