"""CPU twin of tests/gpu/test_reference_gpu.py at the head_dim-32 shapes: Megatron-Core (gloo, TP=1 and TP=2)
against transformers in float32, logits and the gradient of one SGD step, so the GPU harness is checked in CI:
both its per-shape worker and the one that runs several shapes in one process and distributed context."""

import pytest

from tests.gpu.test_reference_gpu import assert_matches, compare_all_worker, compare_worker
from tests.helpers.dist import run_distributed

TP1 = ["gqa1_hd32", "gqa5_hd32", "gqa2_hd32"]


@pytest.fixture(scope="module")
def tp1_results() -> dict:
    return run_distributed(compare_all_worker, 1, args=(TP1, 1), timeout=300)[0]


@pytest.mark.parametrize("name", TP1)
def test_megatron_matches_transformers_float32_logits_and_gradients_at_tp1(name, tp1_results):
    res = tp1_results[name]
    assert "error" not in res, res["error"]
    assert_matches(res)


def test_one_shape_per_process_gives_what_the_shared_process_gives(tp1_results):
    """A shape run alone (its own distributed context) equals its run after other shapes in a shared one."""
    alone = run_distributed(compare_worker, 1, args=("gqa5_hd32", 1), timeout=300)[0]
    assert alone["loss"] == tp1_results["gqa5_hd32"]["loss"]
    assert alone["grad_err"] == tp1_results["gqa5_hd32"]["grad_err"]


def test_megatron_matches_transformers_float32_logits_and_gradients_at_tp2():
    for rank_results in run_distributed(compare_all_worker, 2, args=(["gqa2_hd32", "gqa1_hd32"], 2), timeout=300):
        for res in rank_results.values():
            assert "error" not in res, res["error"]
            assert_matches(res)
