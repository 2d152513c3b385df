"""Conversion stage: Megatron dist-checkpoints <-> Hugging Face Qwen3 folders, and the live weight stream.

One declarative name map (:mod:`.qwen3_map`) serves the offline converters (:mod:`.to_hf`, :mod:`.from_hf`, CLI in
:mod:`.cli`) and the trainer's weight push to rollout engines (:mod:`.live`).
"""


class ConversionError(ValueError):
    """Bad conversion input (missing/truncated files, mismatched config, unknown architecture); nothing was written."""
