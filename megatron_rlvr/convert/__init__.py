"""Conversion: Megatron dist-checkpoints <-> Hugging Face Qwen3 folders (`to_hf`, `from_hf`, CLI in `cli`).

The name map, the HF config <-> shape mapping and the live weight stream are the Qwen3 family's
(`megatron_rlvr.qwen3`), shared with the trainer's weight push to the rollout engines.
"""

from megatron_rlvr.errors import ConversionError

__all__ = ["ConversionError"]
