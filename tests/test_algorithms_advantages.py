"""Advantage estimators, IAC and DAPO batch features (docs/ALGORITHMS.md) against hand-computed values."""
import math

import pytest
import torch

from megatron_rlvr.advantage import ESTIMATORS, base_advantages, compute_advantages, iac_calibrate
from megatron_rlvr.reward.dapo import dynamic_sampling_keep, overlong_penalty


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def ids(*xs):
    return torch.tensor(xs, dtype=torch.int64)


# one group with a single positive out of 4, one all-correct group, one all-wrong group
REWARDS = t(1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0)
GROUPS = ids(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)


def test_grpo_uses_unbiased_group_std_and_zero_for_uniform_groups():
    adv, stats = compute_advantages(REWARDS, GROUPS, "grpo", eps=0.0 + 1e-6)
    # group 0: mean 1/4, unbiased std sqrt((9/16 + 3/16) / 3) = 1/2
    expected = t(1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0, 0, 0, 0, 0)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-5)
    assert stats["degenerate_group_frac"] == pytest.approx(2 / 3)


def test_grpo_eps_is_added_to_the_std():
    adv, _ = compute_advantages(t(1, 0), ids(5, 5), "grpo", eps=0.5)
    # std of (1, 0) with Bessel = sqrt(0.5)
    s = math.sqrt(0.5)
    torch.testing.assert_close(adv, t(0.5 / (s + 0.5), -0.5 / (s + 0.5)))


@pytest.mark.parametrize("name", ["drgrpo", "mean"])
def test_drgrpo_and_mean_subtract_the_group_mean_only(name):
    adv, _ = compute_advantages(REWARDS, GROUPS, name)
    torch.testing.assert_close(adv, t(0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, 0, 0, 0, 0))


def test_rloo_baseline_is_the_mean_of_the_other_responses():
    rewards = t(1, 0, 0, 0.5, 3, 1)
    groups = ids(7, 7, 7, 7, 9, 9)
    adv, _ = compute_advantages(rewards, groups, "rloo")
    # response 0: 1 - (0 + 0 + 0.5)/3 ; response 3: 0.5 - (1 + 0 + 0)/3 ; pair (3, 1): 3-1 and 1-3
    expected = t(1 - 0.5 / 3, -1.5 / 3, -1.5 / 3, 0.5 - 1 / 3, 2, -2)
    torch.testing.assert_close(adv, expected)


def test_reinforce_pp_baseline_whitens_group_centred_rewards_over_the_batch():
    rewards = t(1, 0, 1, 1, 0, 0)
    groups = ids(0, 0, 1, 1, 2, 2)
    adv, stats = compute_advantages(rewards, groups, "reinforce_pp_baseline", eps=0.0)
    # centred: (.5, -.5, 0, 0, 0, 0); batch mean 0, population std sqrt(0.5 / 6)
    s = math.sqrt(0.5 / 6)
    torch.testing.assert_close(adv, t(0.5 / s, -0.5 / s, 0, 0, 0, 0))
    assert stats["adv_mean"] == pytest.approx(0.0, abs=1e-6)
    assert stats["adv_std"] == pytest.approx(1.0, abs=1e-5)


def test_reinforce_pp_baseline_subtracts_a_nonzero_batch_mean():
    rewards = t(2, 0, 1, 0)
    groups = ids(0, 0, 1, 1)
    adv, _ = compute_advantages(rewards, groups, "reinforce_pp_baseline", eps=0.0)
    centred = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    expected = (centred - centred.mean()) / centred.std(correction=0)
    torch.testing.assert_close(adv, expected.float())


def test_raw_returns_rewards_and_allows_groups_of_one():
    adv, _ = compute_advantages(t(0.3, 1.0, 0.0), ids(0, 1, 2), "raw")
    torch.testing.assert_close(adv, t(0.3, 1.0, 0.0))


def test_group_ids_may_be_unsorted_and_sparse():
    # the same three groups as REWARDS/GROUPS, shuffled and renamed
    perm = torch.tensor([5, 0, 11, 2, 7, 1, 9, 3, 4, 10, 6, 8])
    renamed = torch.tensor([1000, -3, 42])[GROUPS]
    for name in ESTIMATORS:
        ref, _ = compute_advantages(REWARDS, GROUPS, name, iac_alpha=1.0)
        got, _ = compute_advantages(REWARDS[perm], renamed[perm], name, iac_alpha=1.0)
        torch.testing.assert_close(got, ref[perm], msg=name)


def test_groups_of_different_sizes_use_their_own_size():
    adv, _ = compute_advantages(t(1, 0, 1, 0, 0), ids(0, 0, 1, 1, 1), "rloo")
    torch.testing.assert_close(adv, t(1, -1, 1, -0.5, -0.5))


@pytest.mark.parametrize("name", [e for e in ESTIMATORS if e != "raw"])
def test_group_estimators_reject_a_group_of_one(name):
    with pytest.raises(ValueError, match="needs >= 2 responses"):
        compute_advantages(t(1, 0, 1), ids(0, 0, 1), name)


def test_unknown_estimator_names_the_choices():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*grpo"):
        compute_advantages(REWARDS, GROUPS, "ppo")


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        compute_advantages(REWARDS, GROUPS[:-1], "grpo")
    with pytest.raises(TypeError, match="integer"):
        compute_advantages(REWARDS, GROUPS.float(), "grpo")
    with pytest.raises(ValueError, match="NaN"):
        compute_advantages(t(float("nan"), 0), ids(0, 0), "grpo")
    with pytest.raises(ValueError, match="alpha"):
        compute_advantages(REWARDS, GROUPS, "grpo", iac_alpha=-0.5)


# ---------------------------------------------------------------- IAC


@pytest.mark.parametrize("name", ESTIMATORS)
def test_iac_alpha_zero_equals_the_base_estimator(name):
    rewards = t(1, 0, 0, 0, 1, 1, 0, 0, 0.5, 1, 0, 1)
    groups = ids(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)
    base = base_advantages(rewards, groups, name)
    adv, stats = compute_advantages(rewards, groups, name, iac_alpha=0.0)
    assert torch.equal(adv, base)
    assert stats["iac_weight_max"] == 1.0


def test_iac_scales_a_single_positive_by_group_size_to_the_alpha():
    # GRPO group of 8 with one success: |P| = 1, N = 8
    rewards = t(1, 0, 0, 0, 0, 0, 0, 0)
    groups = torch.zeros(8, dtype=torch.int64)
    base = base_advantages(rewards, groups, "grpo")
    for alpha in (0.5, 1.0, 1.5, 2.0):
        adv, stats = compute_advantages(rewards, groups, "grpo", iac_alpha=alpha)
        assert adv[0].item() == pytest.approx(base[0].item() * 8**alpha, rel=1e-6)
        assert torch.equal(adv[1:], base[1:])
        assert stats["iac_weight_mean"] == pytest.approx(8**alpha)


def test_iac_weight_is_n_over_number_of_positives():
    # group 0: 3 of 4 positive (w = 4/3); group 1: 1 of 2 positive (w = 2)
    adv = t(0.5, 0.25, 0.25, -1.0, 2.0, -2.0)
    out, w = iac_calibrate(adv, ids(0, 0, 0, 0, 1, 1), alpha=1.0)
    torch.testing.assert_close(w, t(4 / 3, 4 / 3, 4 / 3, 1, 2, 1))
    torch.testing.assert_close(out, t(0.5 * 4 / 3, 0.25 * 4 / 3, 0.25 * 4 / 3, -1.0, 4.0, -2.0))


def test_negative_advantages_are_never_rescaled():
    torch.manual_seed(0)
    rewards = torch.randint(0, 2, (64,)).float()
    groups = torch.arange(8).repeat_interleave(8)
    for name in ESTIMATORS:
        base = base_advantages(rewards, groups, name)
        for alpha in (0.5, 1.0, 2.0):
            adv, _ = compute_advantages(rewards, groups, name, iac_alpha=alpha)
            nonpos = base <= 0
            assert torch.equal(adv[nonpos], base[nonpos]), name
            assert bool((adv[~nonpos] >= base[~nonpos]).all()), name  # N/|P| >= 1


def test_iac_leaves_all_correct_and_all_wrong_groups_unchanged():
    # raw rewards: all-correct group has |P| = N so weight 1; all-wrong group has no positives
    adv, stats = compute_advantages(t(1, 1, 1, 0, 0, 0), ids(0, 0, 0, 1, 1, 1), "raw", iac_alpha=2.0)
    torch.testing.assert_close(adv, t(1, 1, 1, 0, 0, 0))
    assert stats["iac_weight_max"] == 1.0
    # GRPO: both groups have zero advantage, nothing is positive
    adv, stats = compute_advantages(t(1, 1, 1, 0, 0, 0), ids(0, 0, 0, 1, 1, 1), "grpo", iac_alpha=2.0)
    assert torch.equal(adv, torch.zeros(6))
    assert stats["adv_pos_frac"] == 0.0 and stats["iac_weight_mean"] == 1.0


def test_iac_emphasises_hard_queries_over_easy_ones():
    # query 0 is hard (1/4 correct), query 1 easy (3/4 correct); GRPO gives both the same |A| budget
    rewards = t(1, 0, 0, 0, 1, 1, 1, 0)
    groups = ids(0, 0, 0, 0, 1, 1, 1, 1)
    adv, _ = compute_advantages(rewards, groups, "grpo", iac_alpha=1.0)
    hard_push, easy_push = adv[0].item(), adv[4:7].sum().item()
    base = base_advantages(rewards, groups, "grpo")
    assert base[0].item() == pytest.approx(base[4:7].sum().item())
    assert hard_push == pytest.approx(4 * base[0].item())
    assert easy_push == pytest.approx(4 / 3 * base[4:7].sum().item())


# ---------------------------------------------------------------- DAPO


def test_dynamic_sampling_drops_all_correct_and_all_wrong_groups():
    keep = dynamic_sampling_keep(REWARDS, GROUPS)
    assert keep.tolist() == [True] * 4 + [False] * 8


def test_dynamic_sampling_keeps_groups_with_any_reward_difference():
    keep = dynamic_sampling_keep(t(0.5, 0.5, 0.5, 0.25, 0.1, 0.1), ids(3, 3, 1, 1, 0, 0))
    assert keep.tolist() == [False, False, True, True, False, False]


def test_overlong_penalty_is_zero_then_linear_then_minus_penalty():
    lengths = torch.tensor([0, 10, 12, 13, 14, 16, 17, 100])
    out = overlong_penalty(lengths, max_len=16, cache_len=4, penalty=1.0)
    torch.testing.assert_close(out, t(0, 0, 0, -0.25, -0.5, -1.0, -1.0, -1.0))
    scaled = overlong_penalty(lengths, max_len=16, cache_len=4, penalty=0.5)
    torch.testing.assert_close(scaled, 0.5 * out)


def test_overlong_penalty_rejects_a_cache_longer_than_max_len():
    with pytest.raises(ValueError, match="cache_len <= max_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, cache_len=8)


def test_reinforce_pp_baseline_batch_ids_whiten_each_batch_on_its_own():
    rewards = t(1, 0, 1, 1, 2, 0, 1, 0)
    groups = ids(0, 0, 1, 1, 2, 2, 3, 3)
    batches = ids(0, 0, 0, 0, 1, 1, 1, 1)
    adv, _ = compute_advantages(rewards, groups, "reinforce_pp_baseline", batch_ids=batches)
    first, _ = compute_advantages(rewards[:4], groups[:4], "reinforce_pp_baseline")
    second, _ = compute_advantages(rewards[4:], groups[4:], "reinforce_pp_baseline")
    torch.testing.assert_close(adv, torch.cat([first, second]))
