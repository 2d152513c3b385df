"""Building the tree from nested dicts: type coercion with precise errors, dotted overrides, merging, YAML."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from megatron_rlvr.config.tree import MOVED_KEYS, ConfigError, RunConfig


# ----------------------------------------------------------------------------------------------- building
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(path: str, value: Any, tp) -> Any:
    """Check/convert one leaf value against its annotated type, with a precise error."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return _coerce(path, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(path, value, "expected a boolean", "use true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, value, "expected an integer", "give a whole number")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "expected a number", "give a number such as 0.5 or 1e-6")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(path, value, "expected a string", "give a plain string")
        return str(value)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(path, value, "expected a list", "give a YAML list such as [a, b]")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "expected a mapping", "give a YAML mapping such as {key: value}")
        return value
    return value


def _build(cls, data: dict, prefix: str = ""):
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", data, "expected a mapping", "give a YAML mapping")
    types = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    _refuse_moved_keys(data, prefix)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(names)}"
            raise ConfigError(path, value, "unknown config key", hint)
        tp = types[key]
        if _is_dataclass_type(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{path}.")
        else:
            kwargs[key] = _coerce(path, value, tp)
    return cls(**kwargs)


def _refuse_moved_keys(data: dict, prefix: str) -> None:
    """Keys an earlier layout of the tree had at this level (`MOVED_KEYS`) are one ConfigError naming each one's new
    key, before any "unknown key" error: a config.yaml saved before the task sections holds all of them at once."""
    moved = {f"{prefix}{k}": (MOVED_KEYS[f"{prefix}{k}"], v) for k, v in data.items() if f"{prefix}{k}" in MOVED_KEYS}
    if not moved:
        return
    problem = "; ".join(f"{old} moved to {new}" for old, (new, _) in moved.items())
    old, (new, value) = next(iter(moved.items()))
    nested = new.split(".")
    yaml_form = "".join(f"{p}: {{" for p in nested[:-1]) + f"{nested[-1]}: ..." + "}" * (len(nested) - 1)
    fix = (f"use the new key{'s' if len(moved) > 1 else ''} (e.g. {new}=... as an override, or {yaml_form} in a "
           "YAML file or an older run's config.yaml)")
    if len(moved) == 1:
        raise ConfigError(old, value, problem, fix)
    raise ConfigError(prefix.rstrip("."), sorted(k.rpartition(".")[2] for k in moved), problem, fix)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, value, f"{p} is not a section", "override a leaf of the config tree")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["dlc.lam=0.3", "policy.parallel.tp=2"]` -> nested dict. Values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, None, "an override must look like key=value", "write e.g. dlc.lam=0.3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if v is None and isinstance(out.get(k), dict):
            continue  # an empty YAML section (`memory:`) keeps that section's defaults
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> Any:
    """The YAML file's content; a syntax error names the file, line and column (not "<unicode string>")."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("config", where, f"YAML syntax error: {problem}",
                          "fix the file at that line (indentation, a missing ':' or an unclosed quote)") from None


def describe_tree(cls=RunConfig, prefix: str = "", inst=None) -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) rows for `--help`: a section row shows its class's docstring (first line), a leaf
    row its current value in `inst` (default: a fresh `cls()`) and the help stored by `opt(..., help=...)`."""
    rows = []
    inst = cls() if inst is None else inst
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = types[f.name]
        if _is_dataclass_type(tp):
            rows.append((f"{prefix}{f.name}", "", (tp.__doc__ or "").strip().splitlines()[0]))
            rows.extend(describe_tree(tp, f"{prefix}{f.name}.", getattr(inst, f.name)))
        else:
            # a field declared without opt() shows an empty help (so --help and allow_config_change keep working);
            # tests/test_config_help.py fails on it, naming the field
            rows.append((f"{prefix}{f.name}", repr(getattr(inst, f.name)), f.metadata.get("help", "")))
    return rows
