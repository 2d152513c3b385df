"""The Qwen3 family's model-folder record: ``model_info.json`` beside every Megatron dist-checkpoint of a model.

One format, one owner: the trainer writes it at every save (`TrainableModel.save_checkpoint`), `convert from-hf`
writes it for the folders it makes, and every reader (the trainer's load, the converter's checkpoint reader) reads
it through `read_model_info`, so they cannot disagree on what a model folder holds:

    {"preset": "tiny" | null, "shape": {Qwen3Shape fields}, "family": "qwen3" (optional), **extra}

(`extra`: `has_optimizer`, `steps_done`, `dtype`, `source`, whatever the writer records.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from megatron_rlvr.errors import ConversionError
from megatron_rlvr.qwen3.shapes import Qwen3Shape

MODEL_INFO = "model_info.json"


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder's ``model_info.json`` says: the preset it was built from (None for a custom shape from
    `convert from-hf`), its exact shape, and the whole record (`raw`, for the writer's extra fields)."""

    preset: Optional[str]
    shape: Qwen3Shape
    raw: dict


def write_model_info(model_dir: str | os.PathLike, preset: Optional[str], shape: Qwen3Shape, **extra: Any) -> None:
    """Write ``<model_dir>/model_info.json``: {"preset", "shape": Qwen3Shape fields, **extra}."""
    info = {"preset": preset, "shape": dataclasses.asdict(shape), **extra}
    Path(model_dir, MODEL_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_model_info(model_dir: str | os.PathLike) -> ModelInfo:
    """Read and validate ``<model_dir>/model_info.json``; ConversionError (one line: file, problem, fix) when it is
    missing, not JSON, not a Qwen3 dense model, or an incomplete shape."""
    path = Path(model_dir) / MODEL_INFO
    if not path.is_file():
        raise ConversionError(f"{path} is missing: {model_dir} is not a model folder written by the trainer or by "
                              "`convert from-hf`")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from None
    family = info.get("family", "qwen3")
    values = info.get("shape")
    known = {f.name for f in fields(Qwen3Shape)}
    if str(family).lower() != "qwen3" or not isinstance(values, dict) or set(values) - known:
        extra = sorted(set(values) - known) if isinstance(values, dict) else []
        raise ConversionError(f"{path}: unsupported architecture (family {family!r}, unknown shape fields {extra});"
                              " this converter handles Qwen3 dense models only")
    try:
        return ModelInfo(info.get("preset"), Qwen3Shape(**values), info)
    except TypeError as err:
        raise ConversionError(f"{path}: incomplete Qwen3 shape ({err})") from None
