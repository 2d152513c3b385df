"""The toy over-sharpening study (examples/toy_softmax): the qualitative claims that hold robustly, on small runs."""
import json

import pytest
import torch

from examples.toy_softmax.run import main as run_main
from examples.toy_softmax.sim import CAT, PERSIAN, SIAMESE, ToyConfig, embedding, run_toy, summarize

pytestmark = pytest.mark.timeout(600)  # generous: CI machines are shared


def test_embeddings_share_the_cat_direction_and_order_siamese_similarity():
    persian = embedding("Persian")
    cos = {v: float(embedding(f"Siamese-{v}") @ persian) for v in ("high", "mid", "low")}
    assert cos["high"] > cos["mid"] > cos["low"] > 0.5
    assert float(embedding("Cat") @ persian) > 0 and float(embedding("Dog") @ persian) == 0


def test_raw_rewards_collapse_onto_one_correct_label_chosen_by_sampling_noise():
    result = run_toy(ToyConfig(estimator="raw", group_size=4, steps=150, seeds=24, seed=1))
    stats = summarize(result)
    assert stats["collapsed"] >= 20  # at the full 500 steps every seed collapses
    final = result.persian_probs[-1]
    assert float((final[:, CAT] + final[:, PERSIAN]).min()) > 0.98  # the policy is nearly always correct ...
    assert 0 < stats["collapsed_onto_cat"] < stats["collapsed"]  # ... but onto Cat in some seeds, Persian in others


def test_larger_groups_delay_collapse_with_raw_rewards():
    small = summarize(run_toy(ToyConfig(estimator="raw", group_size=4, steps=150, seeds=24, seed=2)))
    large = summarize(run_toy(ToyConfig(estimator="raw", group_size=32, steps=150, seeds=24, seed=2)))
    assert small["collapse_step_median"] is not None
    assert large["collapse_step_median"] is None or large["collapse_step_median"] > small["collapse_step_median"]


def test_heldout_siamese_mode_is_squeezed_more_at_higher_similarity():
    result = run_toy(ToyConfig(estimator="grpo", group_size=8, steps=100, seeds=8, seed=3))
    final = {v: result.siamese_probs[f"Siamese-{v}"][-1, :, SIAMESE] for v in ("high", "mid", "low")}
    start = result.siamese_probs["Siamese-mid"][0, :, SIAMESE]
    torch.testing.assert_close(start, torch.full_like(start, 0.25), rtol=0, atol=1e-12)  # uniform at init
    assert bool((final["low"] < 0.25).all())
    assert bool((final["high"] < final["mid"]).all()) and bool((final["mid"] < final["low"]).all())


def test_momentum_collapses_faster_than_plain_sgd():
    sgd = summarize(run_toy(ToyConfig(estimator="grpo", group_size=8, steps=150, seeds=24, seed=4)))
    mom = summarize(run_toy(ToyConfig(estimator="grpo", group_size=8, optimizer="momentum", steps=150, seeds=24, seed=4)))
    assert mom["collapsed"] > sgd["collapsed"]
    assert mom["collapse_step_median"] is not None and mom["collapse_step_median"] < 50


def test_dlc_with_importance_correction_keeps_both_correct_labels_alive():
    base = ToyConfig(estimator="grpo", group_size=8, steps=200, seeds=24, seed=5)
    plain = summarize(run_toy(base))
    dlc = summarize(run_toy(ToyConfig(**{**base.__dict__, "dlc_lambda": 2.0, "memory_lr": 4.0, "tis_cap": 2.0})))
    assert dlc["never_collapsed"] >= 0.75 * dlc["seeds"]
    assert dlc["collapsed"] < plain["collapsed"]
    assert dlc["final_minority_correct_median"] > 0.05


def test_the_command_writes_all_figures_and_the_stats(tmp_path):
    assert run_main(["--out", str(tmp_path), "--seeds", "3", "--steps", "12"]) == 0
    for name in ("fig1_estimators", "fig2_semantic_coupling", "fig4_rloo_reinforcepp", "fig5_optimizers", "fig6_iac_dlc"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    stats = json.loads((tmp_path / "stats.json").read_text())
    figures = {row["figure"] for row in stats["settings"]}
    assert {"fig1", "fig2", "fig4", "fig5", "fig6"} <= figures
    assert all(row["seeds"] == 3 and row["steps"] == 12 for row in stats["settings"])
    assert (tmp_path / "stats.md").read_text().startswith("| figure |")
