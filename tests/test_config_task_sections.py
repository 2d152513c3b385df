"""Each task has its own config section: `task.name` / `task.seed` are shared, the synthetic tasks read
`task.synthetic`, the math task `task.math`; every registered task names its section. Keys of the flat task section
that came before (`task.path`, ...) are one ConfigError naming where each lives now, on the command line, in a
YAML file and in an older run's saved config.yaml; resuming compares them under their new names."""

import dataclasses
import typing

import pytest
import yaml

from megatron_rlvr.config import (MOVED_KEYS, ConfigError, MathTaskConfig, RunConfig, SyntheticTaskConfig,
                                  TaskConfig, load_config)
from megatron_rlvr.config.data import TASK_SECTIONS
from megatron_rlvr.registry import TASKS

# The task section as it was before the split (every field a saved config.yaml of that time holds, with defaults).
FLAT_TASK = {"name": "synthetic", "path": None, "format": None, "skip_malformed": False, "num_queries": 64,
             "answers_per_query": 4, "seed": 0, "prompt_key": None, "answer_key": None, "tokenizer": None,
             "chat_template": "auto", "system_prompt": None, "enable_thinking": None, "reward_fn": None,
             "verify_workers": 2, "verify_timeout_s": 10.0}


def test_every_registered_task_names_a_section_that_the_task_config_declares():
    hints = typing.get_type_hints(TaskConfig)
    for name in TASKS:
        section = TASKS.entry(name).section
        assert section in TASK_SECTIONS, f"task {name!r}: section {section!r} is not in TASK_SECTIONS"
        cls, _ = TASK_SECTIONS[section]
        assert hints[section] is cls, f"TaskConfig.{section} is not a {cls.__name__}"
    assert {f.name for f in dataclasses.fields(TaskConfig)} == {"name", "seed", *TASK_SECTIONS}
    assert {TASKS.entry(n).section for n in ("synthetic", "synthetic_coupled", "math")} == {"synthetic", "math"}


def test_the_task_that_runs_gets_its_own_section():
    cfg = load_config(overrides=["task.name=synthetic_coupled", "task.synthetic.num_queries=16"])
    assert cfg.task.section() is cfg.task.synthetic and cfg.task.synthetic.num_queries == 16
    assert TaskConfig(name="math").section() == MathTaskConfig()


def test_the_synthetic_task_is_built_from_task_synthetic_and_task_seed():
    from megatron_rlvr.tasks import build_task

    a = build_task(load_config(overrides=["task.synthetic.num_queries=16", "task.synthetic.answers_per_query=3",
                                          "task.seed=2"]).task)
    b = build_task(TaskConfig(seed=2, synthetic=SyntheticTaskConfig(num_queries=16, answers_per_query=3)))
    assert len(a.prompts) == 16 and all(a.num_modes(e) == 3 for e in a.prompts)
    assert [e.prompt for e in a.prompts] == [e.prompt for e in b.prompts]


def test_the_math_dataset_is_required_only_when_the_math_task_runs():
    assert load_config().task.math.path is None  # the default synthetic run has no dataset
    with pytest.raises(ConfigError, match=r"^config error: task.math.path=None: the math task needs a dataset file; "
                                          r"fix: pass task.math.path="):
        load_config(overrides=["task.name=math"])


def test_math_settings_are_checked_even_while_a_synthetic_task_runs():
    with pytest.raises(ConfigError, match=r"task.math.verify_workers=-1: must be >= 0"):
        load_config(overrides=["task.math.verify_workers=-1"])
    with pytest.raises(ConfigError, match=r"task.synthetic.num_queries=0: must be >= 1"):
        load_config(overrides=["task.name=math", "task.synthetic.num_queries=0"])


@pytest.mark.parametrize("old,new", [("task.path", "task.math.path"), ("task.tokenizer", "task.math.tokenizer"),
                                     ("task.num_queries", "task.synthetic.num_queries")])
def test_an_old_flat_task_key_on_the_command_line_is_one_error_naming_its_new_key(old, new):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{old}=7"])
    msg = str(err.value)
    assert msg.startswith(f"config error: {old}=7: {old} moved to {new}; fix: ") and f"{new}=..." in msg
    assert "\n" not in msg


def test_a_yaml_with_old_task_keys_is_one_error_naming_every_new_key(tmp_path):
    path = tmp_path / "c.yaml"
    old = {"task": {"name": "math", "path": "/data/train.jsonl", "format": "deepscaler"}}
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith("config error: task=['format', 'path']: task.path moved to task.math.path; "
                          "task.format moved to task.math.format; fix: use the new keys")
    assert "task: {math: {path: ...}}" in msg and "\n" not in msg


def test_a_run_config_saved_before_the_task_sections_is_refused_naming_each_moved_key(tmp_path):
    old = RunConfig().to_dict()
    old["task"] = dict(FLAT_TASK)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(saved)
    msg = str(err.value)
    for key in FLAT_TASK.keys() - {"name", "seed"}:
        assert f"task.{key} moved to {MOVED_KEYS[f'task.{key}']}" in msg
    assert msg.count("moved to") == len(FLAT_TASK) - 2


def test_moved_keys_cover_exactly_the_fields_of_the_flat_task_section():
    assert set(MOVED_KEYS) == {f"task.{k}" for k in FLAT_TASK} - {"task.name", "task.seed"}
    for old, new in MOVED_KEYS.items():
        section, field = new.split(".")[1:]
        assert field == old.split(".")[1] and field in {f.name for f in dataclasses.fields(TASK_SECTIONS[section][0])}


def test_the_saved_config_of_the_new_layout_loads_back_unchanged(tmp_path):
    cfg = load_config(overrides=["task.name=synthetic_coupled", "task.synthetic.answers_per_query=3",
                                 "task.math.format=gsm8k"])
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml())
    assert load_config(saved) == cfg


def test_allow_config_change_naming_an_old_task_key_is_refused_naming_the_new_one():
    with pytest.raises(ConfigError, match=r"checkpoint.allow_config_change='task.path': task.path moved to "
                                          r"task.math.path; fix: name it task.math.path"):
        load_config(overrides=["checkpoint.allow_config_change=[task.path]"])


def test_resuming_from_a_checkpoint_saved_with_flat_task_keys_still_compares_them(tmp_path):
    from megatron_rlvr.errors import RunError
    from megatron_rlvr.run.guard import check_config_change

    old = RunConfig().to_dict()
    old["task"] = dict(FLAT_TASK, verify_timeout_s=5.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert check_config_change(RunConfig(task=TaskConfig(math=MathTaskConfig(verify_timeout_s=5.0))), tmp_path,
                               3, tmp_path) == []
    with pytest.raises(RunError, match=r"task.math.verify_timeout_s 5.0 -> 10.0"):
        check_config_change(RunConfig(), tmp_path, 3, tmp_path)


def test_the_warm_start_key_depends_on_the_running_tasks_section_only():
    from megatron_rlvr.run.warm_start import cache_key

    base = cache_key(RunConfig())
    assert cache_key(load_config(overrides=["task.math.format=gsm8k", "task.math.verify_workers=0"])) == base
    assert cache_key(load_config(overrides=["task.synthetic.num_queries=32"])) != base
    assert cache_key(load_config(overrides=["task.name=synthetic_coupled"])) != base
