"""The config tree: YAML + dotted overrides, validation with precise messages, the resolved config saved."""

from __future__ import annotations

import pytest
import yaml

from megatron_rlvr.config import ConfigError, RunConfig, check_world_size, describe_tree, load_config


def test_defaults_are_the_embedded_cpu_iac_dlc_run():
    cfg = load_config()
    assert cfg.policy.preset == "tiny" and cfg.memory.preset == "tiny-mem"
    assert cfg.algorithm.iac_alpha == 1.0 and cfg.dlc.enabled and cfg.dlc.lam > 0
    assert cfg.rollout.engine == "embedded"


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"dlc": {"lam": 0.25}, "policy": {"parallel": {"tp": 2}}, "steps": 7}))
    cfg = load_config(path, ["dlc.lam=0.75", "algorithm.estimator=rloo", "rollout.sglang={mem_fraction_static: 0.5}"])
    assert cfg.dlc.lam == 0.75 and cfg.policy.parallel.tp == 2 and cfg.steps == 7
    assert cfg.algorithm.estimator == "rloo" and cfg.rollout.sglang == {"mem_fraction_static": 0.5}


def test_scientific_notation_without_a_dot_is_a_number():
    cfg = load_config(None, ["optimizer.policy.lr=2e-4", "algorithm.std_eps=1e-8"])
    assert cfg.optimizer.policy.lr == 2e-4 and cfg.algorithm.std_eps == 1e-8


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["dlc.plausibility_tau=0.01", "memory.parallel.tp=1"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        (["dlc.lam=-1"], "dlc.lam", "lambda must be >= 0"),
        (["algorithm.iac_alpha=-0.5"], "algorithm.iac_alpha", "alpha must be >= 0"),
        (["policy.parallel.tp=4"], "policy.parallel.tp", "must divide the 2 query groups"),
        (["policy.preset=qwen3-8b", "policy.parallel.tp=16"], "policy.parallel.tp", "must divide the 8 query groups"),
        (["policy.parallel.pp=3"], "policy.parallel.pp", "must divide the 2 layers"),
        (["rollout.group_size=1"], "rollout.group_size", "needs at least 2 responses"),
        (["algorithm.estimator=gpro"], "algorithm.estimator", "unknown advantage estimator"),
        (["algorithm.loss_agg=mean"], "algorithm.loss_agg", "unknown loss aggregation"),
        (["dlc.plausibility_tau=2"], "dlc.plausibility_tau", "must be in (0, 1]"),
        (["rollout.temperature=0"], "rollout.temperature", "temperature > 0"),
        (["memory.preset=qwen3-0.6b"], "memory.preset", "vocabulary"),
        (["memory.parallel.tp=2", "policy.parallel.tp=1"], "memory.parallel", "must not be larger"),
        (["algorithm.mini_batches=3"], "algorithm.mini_batches", "must divide the 64 sequences"),
        (["algorithm.tis=true", "dlc.enabled=false"], "algorithm.tis", "enable dlc"),
        (["dlc.lamda=1"], "dlc.lamda", "did you mean dlc.lam"),
        (["steps=ten"], "steps", "expected an integer"),
        (["rollout.engine=vllm"], "rollout.engine", "unknown rollout engine"),
        (["memory.logprob_impl=cuda"], "memory.logprob_impl", "unknown log-prob implementation"),
        (["task.name=math"], "task.math.path", "needs a dataset file"),
    ],
)
def test_each_bad_value_gets_one_error_naming_field_value_and_fix(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    msg = str(err.value)
    assert msg.startswith(f"config error: {field}=") and words in msg and "fix:" in msg
    assert "\n" not in msg


def test_world_size_must_be_a_multiple_of_each_models_tp_times_pp():
    cfg = load_config(None, ["policy.parallel.tp=2", "policy.parallel.pp=2"])
    check_world_size(cfg, 8)
    with pytest.raises(ConfigError, match="tp \\* pp = 4 does not divide the world size 6"):
        check_world_size(cfg, 6)


def test_help_tree_documents_every_leaf():
    rows = describe_tree()
    keys = {k for k, _, _ in rows}
    assert {"dlc.lam", "algorithm.iac_alpha", "policy.parallel.tp", "memory.parallel.pp", "rollout.engine"} <= keys
    leaves = [r for r in rows if r[1] != ""]
    assert all(doc for _, _, doc in leaves), [k for k, _, d in leaves if not d]
    assert dict((k, d) for k, d, _ in rows)["memory.preset"] == "'tiny-mem'"


def test_recipe_base_is_overridable():
    base = RunConfig(steps=3)
    cfg = load_config(None, ["steps=5"], base=base)
    assert cfg.steps == 5
