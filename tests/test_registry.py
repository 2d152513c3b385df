"""The registries are the one list of each pluggable part: validation, dispatch and messages all read them."""

import subprocess
import sys

import pytest

from megatron_rlvr import registry
from megatron_rlvr.config import ConfigError, load_config

ALL = [registry.ESTIMATORS, registry.LOSS_AGGREGATIONS, registry.KL_ESTIMATORS, registry.TASKS, registry.ENGINES]


@pytest.mark.parametrize("reg", ALL, ids=lambda r: r.kind)
def test_every_registered_name_resolves_to_a_callable_factory(reg):
    for name in reg:
        if reg is registry.ENGINES and name == "sglang":
            factory = reg.entry(name).target  # resolving it is lazy; sglang itself is not needed to find it
            assert factory == "megatron_rlvr.rollout.sglang:build_engine"
            from megatron_rlvr.rollout.sglang import factory as sglang_factory

            assert callable(sglang_factory.build_engine)
            continue
        assert callable(reg.load(name)), f"{reg.kind} {name}: {reg.entry(name).target} is not callable"


def test_an_unknown_name_is_refused_listing_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'; choose one of grpo, drgrpo, rloo"):
        registry.ESTIMATORS.entry("ppo")


@pytest.mark.parametrize("override, field, listed", [
    ("algorithm.estimator=ppo", "algorithm.estimator", ", ".join(registry.ESTIMATORS)),
    ("algorithm.loss_agg=sum", "algorithm.loss_agg", ", ".join(registry.LOSS_AGGREGATIONS)),
    ("algorithm.kl_estimator=k4", "algorithm.kl_estimator", "k1, k2 or k3"),
    ("task.name=chess", "task.name", "synthetic, synthetic_coupled or math"),
    ("rollout.engine=vllm", "rollout.engine", "embedded or sglang"),
])
def test_config_validation_accepts_exactly_the_registered_names(override, field, listed):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.field_path == field and listed in err.value.fix


def test_group_estimators_are_the_ones_flagged_in_the_registry():
    from megatron_rlvr.advantage import GROUP_ESTIMATORS

    assert GROUP_ESTIMATORS == ("grpo", "drgrpo", "rloo", "reinforce_pp_baseline", "mean")
    with pytest.raises(ConfigError, match="needs at least 2 responses per prompt"):
        load_config(None, ["algorithm.estimator=rloo", "rollout.group_size=1"])
    load_config(None, ["algorithm.estimator=raw", "rollout.group_size=1"])  # raw allows groups of one


def test_the_registries_and_the_config_tree_import_without_torch():
    code = "import sys, megatron_rlvr.registry, megatron_rlvr.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
