"""Config overrides touch only their own field: overriding any one leaf of the tree (on the defaults or on a
recipe) leaves every other leaf exactly as it was. Regression: a section whose default comes from a
`default_factory` (`memory` = tiny-mem, `optimizer.memory` lr 1e-3) used to be rebuilt from its class defaults as
soon as one of its fields was overridden."""

import dataclasses
import typing

import pytest
import yaml

from megatron_rlvr.config import RunConfig, load_config
from megatron_rlvr.recipes import get_recipe


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v and k not in ("megatron", "sglang"):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _leaf_types(cls=RunConfig, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_types(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


def _other_value(value, tp):
    """A value of the leaf's type that differs from `value`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) is typing.Union else tp
    if base is bool:
        return not value
    if base is int:
        return (value or 0) + 3
    if base is float:
        return 0.5 if not value else value * 0.5
    if base is str:
        return f"{value}_changed"
    if base is list or typing.get_origin(base) is list:
        return ["http://x:1"]
    if base is dict or typing.get_origin(base) is dict:
        return {"some_option": 1}
    raise AssertionError(f"no test value for type {tp}")


TYPES = _leaf_types()


@pytest.mark.parametrize("base_name", [None, "qwen3_8b_iac_dlc"])
def test_overriding_any_one_leaf_leaves_every_other_leaf_unchanged(base_name):
    base = get_recipe(base_name) if base_name else None
    before = _leaves(load_config(base=base, validate=False).to_dict())
    assert set(before) == set(TYPES)
    for key, tp in TYPES.items():
        new = _other_value(before[key], tp)
        text = yaml.safe_dump(new, default_flow_style=True).strip().removesuffix("...").strip()
        after = _leaves(load_config(base=base, overrides=[f"{key}={text}"], validate=False).to_dict())
        changed = {k for k in before if before[k] != after[k]}
        assert changed == {key}, f"overriding {key} changed {sorted(changed)}"
        expected = new if not isinstance(new, dict) else {**before[key], **new}
        assert after[key] == expected, key


def test_the_reported_cases_keep_their_section_defaults():
    cfg = load_config(overrides=["memory.dtype=float32", "optimizer.memory.weight_decay=0.05"])
    assert cfg.memory.preset == "tiny-mem" and cfg.memory.dtype == "float32"
    assert cfg.optimizer.memory.lr == 1e-3 and cfg.optimizer.memory.weight_decay == 0.05


def test_an_empty_yaml_section_keeps_its_defaults(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("memory:\nsteps: 4\n")
    cfg = load_config(p)
    assert cfg.memory.preset == "tiny-mem" and cfg.steps == 4


def test_a_yaml_section_overrides_only_the_fields_it_names(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("memory:\n  dtype: float32\noptimizer:\n  memory:\n    weight_decay: 0.1\n")
    cfg = load_config(p)
    assert cfg.memory.preset == "tiny-mem" and cfg.optimizer.memory.lr == 1e-3
