"""The over-sharpening signals in the loop: PASS@k for k above G, the entropy over correct answers, the live
summary line and the end-of-run plot panels."""
import math

import pytest
import torch

from megatron_rlvr.eval.rollout_stats import coverage_metrics, pass_at_k
from megatron_rlvr.rollout.types import Generation, pack_generations
from megatron_rlvr.run.metrics import write_plots
from megatron_rlvr.run.progress import summary_line


def _batch(correct_modes: list[list[int]]):
    """One group per list; mode -1 = incorrect."""
    gens, rewards, groups, modes = [], [], [], []
    for g, ms in enumerate(correct_modes):
        for m in ms:
            gens.append(Generation([1, 5], [7, 2], [0.0, 0.0], [0.0, 0.0], "stop"))
            rewards.append(1.0 if m >= 0 else 0.0)
            groups.append(g)
            modes.append(m)
    return pack_generations(gens, rewards, groups, 0, modes=modes)


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_coverage_metrics_give_pass_at_powers_of_two_and_answer_entropy():
    # query 0: modes 0,0,1,-1 -> c=3, entropy of (2/3, 1/3); query 1: all incorrect; query 2: one mode -> entropy 0
    out = coverage_metrics(_batch([[0, 0, 1, -1], [-1, -1, -1, -1], [2, 2, 2, 2]]))
    assert set(out) == {"acc/pass_at_1", "acc/pass_at_2", "acc/pass_at_4", "modes/answer_entropy"}
    assert out["acc/pass_at_1"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert out["acc/pass_at_4"] == pytest.approx(2 / 3)
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert out["modes/answer_entropy"] == pytest.approx((h + 0.0) / 2)


def test_summary_line_keeps_the_latest_evaluation_and_shows_both_ratio_spreads():
    line = summary_line({"reward/mean": 0.5, "offpolicy/mismatch/p05": 0.98, "offpolicy/mismatch/p95": 1.02,
                         "offpolicy/shift/p05": 0.7, "offpolicy/shift/p95": 1.9},
                        {"eval/distinct_correct_per_query": 2.5, "eval/pass_at_4": 0.9, "eval/pass_at_64": 0.95})
    assert "eval modes 2.5" in line and "pass@64 0.95" in line and "pass@4" not in line
    assert "mis 0.98-1.02" in line and "shift 0.70-1.90" in line
    # without DLC the shift ratio is exactly 1: no noise in the line
    assert "shift" not in summary_line({"offpolicy/shift/p05": 1.0, "offpolicy/shift/p95": 1.0})


def test_end_of_run_plot_has_pass_at_k_and_ratio_panels(tmp_path):
    hist = [{"step": s, "reward/mean": 0.1 * s, "eval/pass_at_1": 0.5, "eval/pass_at_64": 0.9 - 0.1 * s,
             "offpolicy/shift/p50": 1.0 + s} for s in range(3)]
    path = write_plots(hist, tmp_path / "p.png")
    assert path is not None and path.stat().st_size > 10_000
