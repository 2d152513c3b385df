"""The config tree's help text lives in field metadata (`opt(default, help=...)`), and `--help` prints it."""

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from megatron_rlvr.config import RunConfig, describe_tree
from megatron_rlvr.config.tree import EvalSetConfig, opt

ROOT = Path(__file__).resolve().parents[1]


def _sections(cls) -> list[type]:
    """`cls` and every section dataclass below it."""
    out = [cls]
    for tp in typing.get_type_hints(cls).values():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.extend(s for s in _sections(tp) if s not in out)
    return out


def test_every_field_of_every_section_has_help_in_its_metadata():
    assert len(_sections(RunConfig)) >= 14  # RunConfig, ModelConfig, ParallelConfig, OptimConfig, ...
    missing = [f"{cls.__name__}.{f.name}" for cls in [*_sections(RunConfig), EvalSetConfig]
               for f in dataclasses.fields(cls) if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"declare these with opt(default, help=...): {missing}"


def test_every_leaf_row_of_the_help_tree_carries_the_fields_metadata_help():
    rows = describe_tree()
    leaves = [(k, d) for k, v, d in rows if v != ""]
    assert len(leaves) > 100 and all(d for _, d in leaves), [k for k, d in leaves if not d]
    assert dict(leaves)["rollout.temperature"] == "sampling temperature (> 0)"


def test_train_help_prints_default_and_help_of_known_keys():
    out = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "train", "--help"], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    lines = [" ".join(line.split()) for line in out.splitlines()]
    # rows under the "rollout:" and "dlc:" sections: name, default, help (columns collapsed to single spaces)
    assert "temperature 1.0 sampling temperature (> 0)" in lines
    assert any(line.startswith("lam 0.3 balance factor lambda >= 0 (0 = plain sampling, memory still trained).")
               for line in lines)
    assert "tp 1 tensor-parallel size; must divide the attention heads and the KV (query) groups" in lines
    assert "dlc: # Distribution-level calibration: sample from softmax((z_policy - lam * z_memory) / T) " \
           "(docs/ALGORITHMS.md)." in lines
    assert "preset 'tiny-mem' shape preset: qwen3-0.6b|1.7b|4b|8b|14b|32b or tiny|tiny-tied|tiny-mem|tiny-deep" \
        in lines


def test_opt_keeps_dataclass_default_semantics():
    @dataclasses.dataclass
    class Example:
        name: str = opt(help="a required field")
        items: list = opt(factory=list, help="a fresh list per instance")
        lr: float = opt(1e-3, help="a plain default")

    a, b = Example("x"), Example("y")
    assert a.items == [] and a.items is not b.items and a.lr == 1e-3
    with pytest.raises(TypeError):
        Example()  # no default, no factory: required
    assert dataclasses.fields(Example)[2].metadata["help"] == "a plain default"
    with pytest.raises(ValueError, match="non-empty help"):
        opt(1, help=" ")
    with pytest.raises(ValueError, match="either a default or a factory"):
        opt([], factory=list, help="both")


def test_mutable_defaults_and_sections_are_fresh_per_run_config():
    a, b = RunConfig(), RunConfig()
    assert a.rollout.server_urls is not b.rollout.server_urls and a.policy is not b.policy
    assert a.optimizer.memory.lr == 1e-3 and a.memory.preset == "tiny-mem"


_OLD_TREE_DUMP = """
import dataclasses, json, sys
from megatron_rlvr.config import RunConfig, describe_tree
from megatron_rlvr.config import tree
from megatron_rlvr.config.tree import EvalSetConfig
print(json.dumps({"file": tree.__file__, "defaults": RunConfig().to_dict(), "rows": describe_tree(),
                  "evalset": dataclasses.asdict(EvalSetConfig("n", "p"))}))
"""


def _dump(pythonpath: Path) -> dict:
    # cwd too: `python -c` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", _OLD_TREE_DUMP], capture_output=True, text=True, check=True,
                         cwd=pythonpath, env={**os.environ, "PYTHONPATH": str(pythonpath)}).stdout
    return json.loads(out.splitlines()[-1])
