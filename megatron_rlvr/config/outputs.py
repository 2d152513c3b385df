"""Config sections of the outputs: checkpoints and logging; their checks beside them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_rlvr.config.fields import opt, require as _require


@dataclass
class CheckpointConfig:
    """Megatron dist-checkpointing of models, optimizers, RNG and data position."""

    save_interval: int = opt(10, help="save every N steps (0 = only at the end)")
    load: str = opt("auto", help="resume: auto (latest in <run_dir>/checkpoints if any) | none | a checkpoint folder")
    keep_last: int = opt(2, help="keep this many latest checkpoints (0 keeps all)")
    export_hf: bool = opt(True, help="export both models to Hugging Face format at the end of the run")
    allow_config_change: list = opt(factory=list, help="fields that may differ from the checkpoint's config "
                                                       "on resume (each change is recorded in the run folder)")
    verify: str = opt("sha256", help="integrity record checked on resume: sha256 (sizes and "
                                     "checksums of every file) | size (sizes only, faster)")

def validate_checkpoint(c: CheckpointConfig) -> None:
    """The checkpoint section on its own (its allow_config_change names: `validate_config`, which knows the tree)."""
    _require(c.save_interval >= 0, "checkpoint.save_interval", c.save_interval, "must be >= 0", "use 0 for end only")
    _require(c.keep_last >= 0, "checkpoint.keep_last", c.keep_last, "must be >= 0", "use 0 to keep all")
    _require(c.load in ("auto", "none") or Path(c.load).expanduser().exists(), "checkpoint.load", c.load,
             "checkpoint folder does not exist", "use auto, none, or an existing checkpoint folder")
    _require(c.verify in ("sha256", "size"), "checkpoint.verify", c.verify, "unknown integrity check",
             "use sha256 or size")


@dataclass
class LoggingConfig:
    """Metrics sinks."""

    progress: bool = opt(True, help="rich progress bar with a live summary")
    tensorboard: bool = opt(True, help="TensorBoard event files under <run_dir>/tb")
    wandb: bool = opt(False, help="log to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = opt("megatron-rlvr", help="W&B project")
    plots: bool = opt(True, help="write PNG plots of the over-sharpening curves at the end")
    save_rollouts: bool = opt(False, help="save every step's rollouts (for train-only "
                                          "replay) under <run_dir>/rollouts")
