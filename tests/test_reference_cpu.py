"""CPU twin of tests/gpu/test_reference_gpu.py at the head_dim-32 shapes: Megatron-Core (gloo, TP=1 and TP=2)
against transformers in float32, logits and the gradient of one SGD step, so the GPU harness is checked in CI."""

import pytest

from tests.gpu.test_reference_gpu import assert_matches, compare_worker
from tests.helpers.dist import run_distributed


@pytest.mark.parametrize("name", ["gqa1_hd32", "gqa5_hd32"])
def test_megatron_matches_transformers_float32_logits_and_gradients_at_tp1(name):
    assert_matches(run_distributed(compare_worker, 1, args=(name, 1), timeout=300)[0])


def test_megatron_matches_transformers_float32_logits_and_gradients_at_tp2():
    for res in run_distributed(compare_worker, 2, args=("gqa2_hd32", 2), timeout=300):
        assert_matches(res)
