"""Run-level invariants of the plumbing around the step: the saved config is the one that ran, and the run mode
is a rollout source chosen once."""

from types import SimpleNamespace

import pytest

from megatron_rlvr.config import load_config
from megatron_rlvr.run.checks import InvariantError
from megatron_rlvr.run.runtime import EngineRollouts, ReplayRollouts, check_config_unchanged, rollout_source


def test_a_config_changed_during_the_run_stops_it_naming_the_changed_field(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    run = SimpleNamespace(cfg=cfg, run_dir=tmp_path)
    check_config_unchanged(run)  # untouched: passes
    cfg.dlc.lam = 0.7
    with pytest.raises(InvariantError, match=r"config.yaml is not the config that ran: .*lam: 0.7"):
        check_config_unchanged(run)


@pytest.mark.parametrize("mode, source, live", [("full", EngineRollouts, True), ("rollout_only", EngineRollouts, True),
                                                ("train_only", ReplayRollouts, False)])
def test_each_mode_is_one_rollout_source(tmp_path, mode, source, live):
    extra = [f"replay_dir={tmp_path}"] if mode == "train_only" else []
    src = rollout_source(load_config(None, [f"mode={mode}", *extra]))
    assert isinstance(src, source) and src.live is live
