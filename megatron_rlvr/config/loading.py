"""Loading a run config: defaults (or a recipe) <- YAML file <- dotted `key=value` overrides, validated once;
and the `--help` listing of the tree."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

from megatron_rlvr.config.building import _build, _merge, _read_yaml, parse_overrides
from megatron_rlvr.config.tree import ConfigError, RunConfig
from megatron_rlvr.config.validation import validate_config


def load_config(
    path: Optional[str | os.PathLike] = None,
    overrides: Optional[list[str]] = None,
    base: Optional[RunConfig] = None,
    validate: bool = True,
) -> RunConfig:
    """Build the run config: defaults (or `base`, e.g. a recipe) <- YAML file <- `key=value` overrides.

    The merge starts from the full tree of the defaults, never from an empty one: a section whose default comes
    from a `default_factory` (e.g. `memory`, preset tiny-mem) would otherwise be rebuilt from its class's defaults
    as soon as one of its fields is overridden, silently changing every other field of the section.
    """
    tree = dataclasses.asdict(base if base is not None else RunConfig())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", str(path), "config file not found", "pass an existing YAML file")
        loaded = _read_yaml(p)
        if not isinstance(loaded, dict):
            raise ConfigError("config", str(path), "the YAML file is not a mapping", "write key: value pairs")
        tree = _merge(tree, loaded)
    tree = _merge(tree, parse_overrides(overrides or []))
    cfg = _build(RunConfig, tree)
    if validate:
        validate_config(cfg)
    return cfg
