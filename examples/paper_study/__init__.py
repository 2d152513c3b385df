"""The paper's comparison with the real trainer: GRPO over-sharpens, IAC and DLC hold it off (see run.py)."""
