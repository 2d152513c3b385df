"""Evaluation stage: the unbiased PASS@k estimator (Chen et al. 2021) and AVG@k, against the closed form and
hand-computed cases."""

import math

import pytest

from megatron_rlvr.eval.passk import accuracy_at_k, ks_up_to, pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 2, 1 - 3 / 6),        # 1 - C(3,2)/C(4,2)
    (4, 2, 2, 1 - 1 / 6),        # 1 - C(2,2)/C(4,2)
    (8, 3, 4, 1 - 5 / 70),       # 1 - C(5,4)/C(8,4)
    (64, 1, 8, 8 / 64),          # one correct in 64: a k-subset holds it with probability k/n
    (5, 0, 3, 0.0),
    (5, 3, 3, 1.0),              # n - c < k: every 3-subset holds a correct sample
    (8, 8, 8, 1.0),
    (7, 2, 1, 2 / 7),            # PASS@1 = c / n
])
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_closed_form_everywhere():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_many_samples():
    # C(1024, 512) overflows a float; the product form does not
    assert pass_at_k(1024, 1, 512) == pytest.approx(0.5)


def test_pass_at_k_refuses_k_above_the_samples():
    with pytest.raises(ValueError, match=r"need 0 <= c <= n and 1 <= k <= n"):
        pass_at_k(4, 1, 8)


def test_ks_are_powers_of_two_up_to_the_samples_and_the_samples_themselves():
    assert ks_up_to(1) == [1] and ks_up_to(8) == [1, 2, 4, 8] and ks_up_to(6) == [1, 2, 4, 6]
    assert ks_up_to(64) == [1, 2, 4, 8, 16, 32, 64]


def test_accuracy_at_k_averages_over_prompts():
    correct = [[True, False, False, False], [True, True, False, False], [False] * 4]
    m = accuracy_at_k(correct)
    assert m["avg_at_4"] == pytest.approx(3 / 12)
    assert m["pass_at_1"] == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)
    assert m["pass_at_2"] == pytest.approx((1 / 2 + 5 / 6 + 0) / 3)
    assert m["pass_at_4"] == pytest.approx((1 + 1 + 0) / 3)
    assert set(m) == {"avg_at_4", "pass_at_1", "pass_at_2", "pass_at_4"}
    with pytest.raises(ValueError, match=r"same number"):
        accuracy_at_k([[True], [True, False]])
