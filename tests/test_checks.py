"""In-loop invariants: the step-0 trainer/engine log-prob gap stops a run with one clear error (or warns, or is
off), with a dtype-aware tolerance; tested by injecting a real mismatch through the public config (a bf16 engine
against a float32 trainer with a tolerance below bf16 rounding)."""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.run.checks import (InvariantError, check_logprob_gap, check_step0_ppo_kl, logprob_gap,
                                  logprob_gap_tolerance)
from tests.test_train_e2e import metrics, train


def test_the_gap_is_the_mean_absolute_difference_over_response_tokens():
    a = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, -9.0]])
    b = torch.tensor([[5.0, -1.5, -2.0], [-0.5, -0.25, 0.0]])
    mask = torch.tensor([[False, True, True], [True, True, False]])
    assert logprob_gap(a, b, mask) == pytest.approx((0.5 + 0.0 + 0.0 + 0.25) / 4)


def test_the_tolerance_follows_the_looser_dtype_unless_overridden():
    assert logprob_gap_tolerance(torch.float32, torch.float32) == 1e-3
    assert logprob_gap_tolerance(torch.float32, torch.bfloat16) == 0.05
    assert logprob_gap_tolerance(torch.bfloat16, torch.float32) == 0.05
    assert logprob_gap_tolerance(torch.bfloat16, torch.bfloat16, override=0.2) == 0.2


def test_a_gap_beyond_the_tolerance_stops_with_both_numbers_the_causes_and_the_switch():
    with pytest.raises(InvariantError) as err:
        check_logprob_gap(0.37, "error", torch.float32, torch.float32)
    msg = str(err.value)
    assert "0.37" in msg and "0.001" in msg and "float32" in msg
    assert "weight push" in msg and "checks.logprob_gap=warn" in msg


def test_warn_mode_logs_and_continues_and_off_mode_is_silent():
    lines = []
    with pytest.warns(UserWarning, match="step-0 invariant"):
        check_logprob_gap(0.37, "warn", torch.float32, torch.float32, log=lines.append)
    assert lines and "0.37" in lines[0]
    check_logprob_gap(10.0, "off", torch.float32, torch.float32)
    check_logprob_gap(4e-4, "error", torch.float32, torch.float32)  # within tolerance: no error


def test_a_ppo_kl_above_zero_before_the_first_update_stops_the_run():
    check_step0_ppo_kl(1e-7)
    with pytest.raises(InvariantError, match="PPO KL"):
        check_step0_ppo_kl(0.02)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("warm_start_cache")


def test_a_run_whose_engine_disagrees_with_the_trainer_stops_at_step_0(tmp_path, cache):
    # A bf16 engine against the float32 trainer: a real gap of ~1e-3..1e-2 nats, above a tolerance of 1e-6.
    res = train(tmp_path / "run", cache, "steps=2", "rollout.dtype=bfloat16", "checks.logprob_gap_tolerance=1e-6",
                "checkpoint.export_hf=false", check=False)
    assert res.returncode != 0
    assert "step-0 invariant violated" in res.stderr + res.stdout
    assert "checks.logprob_gap=warn" in res.stderr + res.stdout
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()  # nothing trained on the bad rollouts


def test_the_same_run_in_warn_mode_trains_and_records_the_gap(tmp_path, cache):
    run = tmp_path / "run"
    res = train(run, cache, "steps=1", "rollout.dtype=bfloat16", "checks.logprob_gap_tolerance=1e-6",
                "checks.logprob_gap=warn", "checkpoint.export_hf=false")
    assert "warning: step-0 invariant violated" in res.stdout
    gap = metrics(run)[0]["rollout/logprob_abs_diff"]
    assert 1e-6 < gap < 0.05
