"""Qwen3 models: shape presets and the Megatron-Core model provider."""
