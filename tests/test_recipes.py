"""Recipes: each returns a full, valid RunConfig; the paper recipes carry the paper's setting; each has a README."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from megatron_rlvr.cli import main as cli_main
from megatron_rlvr.config import ConfigError, RunConfig, check_world_size, load_config
from megatron_rlvr.recipes import PAPER_LR, RECIPES, get_recipe

REPO = Path(__file__).resolve().parents[1]
PAPER_RECIPES = {"qwen3_4b_iac_dlc": "qwen3-4b", "qwen3_8b_iac_dlc": "qwen3-8b", "qwen3_14b_iac_dlc": "qwen3-14b"}


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "What is 2+3?", "answer": "5"}\n')
    return path


def _resolved(name: str, dataset: Path) -> RunConfig:
    """The recipe through the same path as `train --recipe` (validated), with a dataset where the task needs one."""
    overrides = [f"task.math.path={dataset}"] if get_recipe(name).task.name == "math" else []
    return load_config(None, overrides, base=get_recipe(name))


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_returns_a_full_config_that_validates(name, dataset):
    cfg = _resolved(name, dataset)
    assert isinstance(cfg, RunConfig)
    # a fresh object per call: editing one recipe result never leaks into the next
    a, b = get_recipe(name), get_recipe(name)
    a.rollout.sglang["mem_fraction_static"] = 0.1
    assert b.rollout.sglang == {} and a is not b


def test_tiny_cpu_recipe_is_the_embedded_default():
    assert get_recipe("tiny_cpu") == RunConfig()


@pytest.mark.parametrize("name, preset", PAPER_RECIPES.items())
def test_paper_recipes_carry_the_papers_setting(name, preset, dataset):
    cfg = _resolved(name, dataset)
    assert cfg.policy.preset == preset and cfg.memory.preset == "qwen3-1.7b"
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size) == (64, 8)
    assert cfg.algorithm.estimator == "grpo" and cfg.algorithm.iac_alpha == 1.0
    assert cfg.dlc.enabled and cfg.dlc.lam > 0
    for opt in (cfg.optimizer.policy, cfg.optimizer.memory):  # AdamW for every model, lr 1e-6 (see PAPER_LR)
        assert opt.optimizer == "adam" and opt.lr == PAPER_LR == 1e-6
    assert cfg.steps == 2000 and cfg.checkpoint.save_interval == 50 and cfg.eval.interval == 50
    assert cfg.rollout.engine == "sglang" and cfg.task.name == "math" and not cfg.warm_start.enabled


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_pack_their_ragged_reasoning_responses_without_a_larger_micro_batch(name, dataset):
    """Packing the same 4 sequences per micro-batch only drops the padding's compute: memory stays within the padded
    micro-batch's, so no token budget has to be guessed for a GPU the recipe has not seen."""
    cfg = _resolved(name, dataset)
    assert cfg.algorithm.pack_sequences and cfg.algorithm.micro_batch_size == 4
    assert cfg.algorithm.max_tokens_per_micro_batch == 0


@pytest.mark.parametrize("name, nodes", [("qwen3_4b_iac_dlc", 4), ("qwen3_8b_iac_dlc", 4), ("qwen3_14b_iac_dlc", 4),
                                         ("qwen3_8b_iac_dlc", 1), ("qwen3_14b_iac_dlc", 1)])
def test_paper_recipe_layouts_fit_whole_8_gpu_nodes(name, nodes, dataset):
    cfg = _resolved(name, dataset)
    check_world_size(cfg, nodes * 8)  # the paper ran on 32 H200s = 4 nodes x 8
    assert cfg.policy.parallel.tp <= 8 and cfg.memory.parallel.tp <= cfg.policy.parallel.tp


def test_larger_policies_get_more_tensor_parallelism():
    tps = [get_recipe(n).policy.parallel.tp for n in ("qwen3_4b_iac_dlc", "qwen3_8b_iac_dlc", "qwen3_14b_iac_dlc")]
    assert tps == sorted(tps) and tps[0] < tps[-1]


def test_bench_recipe_is_a_single_gpu_run_with_real_qwen3_shapes(dataset):
    cfg = _resolved("qwen3_1p7b_bench", dataset)
    assert (cfg.policy.preset, cfg.memory.preset) == ("qwen3-1.7b", "qwen3-0.6b")
    check_world_size(cfg, 1)
    assert cfg.rollout.engine == "sglang" and cfg.dlc.enabled
    assert not cfg.checkpoint.export_hf and cfg.eval.interval == 0  # measures step cost, not learning


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ConfigError) as err:
        get_recipe("qwen3_9b")
    msg = str(err.value)
    assert "unknown recipe" in msg and all(name in msg for name in RECIPES) and "\n" not in msg


def test_recipe_names_accept_hyphens():
    assert get_recipe("qwen3-8b-iac-dlc") == get_recipe("qwen3_8b_iac_dlc")


def test_math_recipe_without_a_dataset_fails_validation_naming_task_math_path():
    with pytest.raises(ConfigError, match=r"task\.math\.path=None: the math task needs a dataset file"):
        load_config(None, [], base=get_recipe("qwen3_8b_iac_dlc"))


def test_train_cli_resolves_a_recipe_with_overrides(dataset, capsys):
    rc = cli_main(["train", "--recipe", "qwen3_14b_iac_dlc", f"task.math.path={dataset}", "dlc.lam=0.3",
                   "--print-config"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "preset: qwen3-14b" in out and "tp: 4" in out  # from the recipe
    assert "lam: 0.3" in out and get_recipe("qwen3_14b_iac_dlc").dlc.lam != 0.3  # from the override


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_has_a_readme_listed_in_the_index(name):
    readme = REPO / "examples" / "recipes" / f"{name}.md"
    assert readme.is_file(), f"missing {readme}"
    text = readme.read_text()
    assert f"--recipe {name}" in text  # shows how to run it
    assert f"({name}.md)" in (REPO / "examples" / "recipes" / "README.md").read_text()


def test_recipe_fields_are_all_dataclass_fields():
    """Recipes build the tree from the config dataclasses only (no ad-hoc attributes the YAML dump would miss)."""
    for name, fn in RECIPES.items():
        cfg = fn()
        assert load_config(None, [], base=cfg, validate=False).to_dict() == dataclasses.asdict(cfg), name
