"""Off-policy correction built for DLC: the mismatch and shift ratios kept apart, token/sequence truncated and masked
IS on each, their metrics, the config combinations, and the wiring into the policy loss."""
import math

import pytest
import torch

from megatron_rlvr.config import OFFPOLICY_CORRECTIONS, ConfigError, load_config
from megatron_rlvr.update.losses import policy_loss, tis_weights
from megatron_rlvr.update.offpolicy import CORRECTIONS, correction_weights, offpolicy_weights, split_log_ratios

LOG = math.log
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)


def lp(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# Hand-built log-probs: pi_old, the engine's pi_policy and pi_cal for 2 responses (row 0 has 2 tokens).
# mismatch r = old / pol: [[1.25, 0.8], [1, 4, 0.5]]; shift r = pol / cal: [[2, 0.5], [3, 1, 1]]
OLD = lp([LOG(0.5), LOG(0.4), 0.0], [LOG(0.3), LOG(0.8), LOG(0.1)])
POL = lp([LOG(0.4), LOG(0.5), 9.0], [LOG(0.3), LOG(0.2), LOG(0.2)])
CAL = lp([LOG(0.2), LOG(1.0), -9.0], [LOG(0.1), LOG(0.2), LOG(0.2)])


def test_ratios_are_split_into_numerical_mismatch_and_intended_shift():
    log_mis, log_sft = split_log_ratios(OLD, POL, CAL, MASK)
    torch.testing.assert_close(log_mis.exp() * MASK, lp([1.25, 0.8, 0], [1, 4, 0.5]))
    torch.testing.assert_close(log_sft.exp() * MASK, lp([2, 0.5, 0], [3, 1, 1]))
    # their product is the single ratio pi_old / pi_cal that the legacy `tis` truncates
    torch.testing.assert_close((log_mis + log_sft)[MASK], (OLD - CAL)[MASK])
    assert log_mis[0, 2] == 0 and log_sft[0, 2] == 0  # padding (which holds +-9 here) is zeroed


def test_lambda_zero_gives_shift_ratio_one_and_weight_one():
    # at lambda = 0 the engine samples pi_policy itself: pi_cal == pi_policy(engine), so the shift ratio is 1
    _, log_sft = split_log_ratios(OLD, POL, POL, MASK)
    assert torch.equal(log_sft, torch.zeros_like(log_sft))
    for corr in CORRECTIONS:
        w, clipped = correction_weights(log_sft, MASK, corr, cap=2.0)
        torch.testing.assert_close(w, MASK.float())
        assert not clipped.any(), corr


def test_trainer_equal_to_engine_gives_mismatch_ratio_one():
    log_mis, _ = split_log_ratios(POL, POL, CAL, MASK)
    w, stats = offpolicy_weights(POL, POL, POL, MASK, mismatch="seq-tis", shift="token-mis")
    torch.testing.assert_close(w, MASK.float())
    assert stats["offpolicy/mismatch/mean"] == 1.0 and stats["offpolicy/shift/clipped_frac"] == 0.0


def test_token_tis_truncates_each_token_at_the_cap():
    _, log_sft = split_log_ratios(OLD, POL, CAL, MASK)
    w, clipped = correction_weights(log_sft, MASK, "token-tis", cap=1.5)
    torch.testing.assert_close(w, lp([1.5, 0.5, 0], [1.5, 1, 1]))
    assert clipped.tolist() == [[True, False, False], [True, False, False]]


def test_token_mis_drops_tokens_outside_low_and_cap_and_keeps_the_ratio_inside():
    log_mis, _ = split_log_ratios(OLD, POL, CAL, MASK)
    w, clipped = correction_weights(log_mis, MASK, "token-mis", cap=2.0, low=0.6)
    torch.testing.assert_close(w, lp([1.25, 0.8, 0], [1, 0, 0]))  # 4 > cap and 0.5 < low are dropped
    assert clipped.tolist() == [[False, False, False], [False, True, True]]


def test_seq_tis_truncates_the_product_over_a_response_and_broadcasts_it():
    _, log_sft = split_log_ratios(OLD, POL, CAL, MASK)  # sequence ratios: 2 * 0.5 = 1, 3 * 1 * 1 = 3
    w, clipped = correction_weights(log_sft, MASK, "seq-tis", cap=2.0)
    torch.testing.assert_close(w, lp([1, 1, 0], [2, 2, 2]))
    assert clipped.tolist() == [False, True]


def test_seq_mis_drops_whole_responses_and_keeps_the_sequence_ratio_otherwise():
    log_mis, _ = split_log_ratios(OLD, POL, CAL, MASK)  # sequence ratios: 1.25 * 0.8 = 1, 1 * 4 * 0.5 = 2
    w, clipped = correction_weights(log_mis, MASK, "seq-mis", cap=1.5)
    torch.testing.assert_close(w, lp([1, 1, 0], [0, 0, 0]))
    assert clipped.tolist() == [False, True]
    w, _ = correction_weights(log_mis, MASK, "seq-mis", cap=3.0, low=1.5)
    torch.testing.assert_close(w, lp([0, 0, 0], [2, 2, 2]))


def test_combined_weight_is_the_product_of_both_corrections():
    w, _ = offpolicy_weights(OLD, POL, CAL, MASK, mismatch="token-tis", mismatch_cap=2.0, shift="seq-tis",
                             shift_cap=2.0)
    # mismatch [[1.25, 0.8], [1, 2, 0.5]] x shift [[1, 1], [2, 2, 2]]
    torch.testing.assert_close(w, lp([1.25, 0.8, 0], [2, 4, 1]))


def test_both_none_gives_no_weights_but_still_the_stats_of_both_ratios():
    w, stats = offpolicy_weights(OLD, POL, CAL, MASK)
    assert w is None
    # shift token ratios [2, 0.5, 3, 1, 1]: mean 1.5, median 1, max 3; only the 3 lies above the cap 2
    assert stats["offpolicy/shift/mean"] == pytest.approx(1.5)
    assert stats["offpolicy/shift/p50"] == pytest.approx(1.0)
    assert stats["offpolicy/shift/max"] == pytest.approx(3.0)
    assert stats["offpolicy/shift/above_cap_frac"] == pytest.approx(0.2)
    assert stats["offpolicy/shift/clipped_frac"] == 0.0 and stats["offpolicy/shift/weight_mean"] == 1.0
    # mismatch token ratios [1.25, 0.8, 1, 4, 0.5]: mean 1.51; sequence ratios 1 and 2 -> median 1.5
    assert stats["offpolicy/mismatch/mean"] == pytest.approx(7.55 / 5)
    assert stats["offpolicy/mismatch/seq_p50"] == pytest.approx(1.5)
    assert {"p05", "p95", "seq_p95"} <= {k.rsplit("/", 1)[1] for k in stats}


def test_clipped_frac_counts_tokens_or_sequences_by_the_correction_level():
    _, stats = offpolicy_weights(OLD, POL, CAL, MASK, shift="token-tis", shift_cap=1.5)
    assert stats["offpolicy/shift/clipped_frac"] == pytest.approx(2 / 5)  # tokens 2 and 3 of 5
    assert stats["offpolicy/shift/weight_mean"] == pytest.approx((1.5 + 0.5 + 1.5 + 1 + 1) / 5)
    _, stats = offpolicy_weights(OLD, POL, CAL, MASK, shift="seq-tis", shift_cap=2.0)
    assert stats["offpolicy/shift/clipped_frac"] == pytest.approx(1 / 2)  # response 1 of 2


def test_policy_loss_multiplies_each_token_by_the_offpolicy_weight():
    w, _ = offpolicy_weights(OLD, POL, CAL, MASK, shift="token-tis", shift_cap=1.5)
    logp = OLD.clone().requires_grad_(True)  # ratio 1: each token's term is -A * w
    adv = torch.tensor([1.0, -2.0])
    loss, stats = policy_loss(logp, OLD, adv, MASK, tis_weights=w)
    assert loss.item() == pytest.approx((-(1.5 + 0.5) + 2 * (1.5 + 1 + 1)) / 5)
    assert stats["tis_weight_mean"].item() == pytest.approx(5.5 / 5)


def test_sequence_ratio_saturates_instead_of_overflowing():
    big = torch.full((1, 3), 30.0)
    w, clipped = correction_weights(big, torch.ones(1, 3, dtype=torch.bool), "seq-mis", cap=2.0)
    assert torch.isfinite(w).all() and w.sum() == 0 and clipped.tolist() == [True]


def test_bad_correction_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown off-policy correction 'tis'"):
        correction_weights(OLD, MASK, "tis", cap=2.0)
    with pytest.raises(ValueError, match="lower bound"):
        correction_weights(OLD, MASK, "token-mis", cap=2.0, low=2.0)


def test_config_lists_the_same_corrections_as_the_algorithms():
    assert OFFPOLICY_CORRECTIONS == CORRECTIONS


@pytest.mark.parametrize("overrides, field", [
    (["algorithm.shift_correction=token-tis", "dlc.enabled=false"], "algorithm.shift_correction"),
    (["algorithm.tis=true", "algorithm.mismatch_correction=seq-tis"], "algorithm.mismatch_correction"),
    (["algorithm.shift_correction=tis"], "algorithm.shift_correction"),
    (["algorithm.shift_correction=token-tis", "algorithm.shift_mask_low=0.5"], "algorithm.shift_mask_low"),
    (["algorithm.mismatch_correction=seq-mis", "algorithm.mismatch_mask_low=3", "algorithm.mismatch_cap=2"],
     "algorithm.mismatch_mask_low"),
    (["algorithm.shift_cap=0"], "algorithm.shift_cap"),
])
def test_bad_offpolicy_configs_raise_one_config_error_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert err.value.field_path == field and "fix:" in str(err.value)


def test_existing_tis_configs_still_load_and_keep_their_meaning():
    cfg = load_config(overrides=["algorithm.tis=true", "algorithm.tis_cap=1.5"])
    assert cfg.algorithm.tis and cfg.algorithm.mismatch_correction == "none"
    # legacy tis is token-level truncation of the product ratio: the same as token-tis on old - cal
    mine, _ = correction_weights(OLD - CAL, MASK, "token-tis", cap=1.5)
    torch.testing.assert_close(mine, tis_weights(OLD, CAL, 1.5) * MASK)
    ok = load_config(overrides=["algorithm.mismatch_correction=token-mis", "algorithm.mismatch_mask_low=0.5",
                                "algorithm.shift_correction=seq-tis"])
    assert ok.algorithm.shift_correction == "seq-tis"
