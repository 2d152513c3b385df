"""Policy loss (docs/ALGORITHMS.md, "Policy loss"): PPO clipping, aggregation modes, exact micro-batching, KL, entropy, TIS ("DLC")."""
import math

import pytest
import torch

from megatron_rlvr.update.losses import LOSS_AGG_MODES, count_loss_units, kl_estimate, policy_loss, tis_weights

LOG = math.log


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_ragged_lengths_in_each_aggregation_mode():
    # ratio 1 everywhere, so every response token contributes -A; response 0 has 3 tokens, response 1 has 1
    lp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0])
    expected = {
        "token-mean": (-1 * 3 + 2 * 1) / 4,
        "seq-mean-token-mean": (-1 + 2) / 2,
        "seq-mean-token-sum-norm": (-3 + 2) / (4 * 2),  # constant L_max = 4
    }
    for mode, value in expected.items():
        loss, stats = policy_loss(lp, lp.detach(), adv, mask, loss_agg=mode, max_response_len=4)
        assert loss.item() == pytest.approx(value), mode
        assert stats["pg_loss"].item() == pytest.approx(value), mode
        assert stats["pg_clipfrac"].item() == 0.0


def test_gradient_of_token_mean_is_minus_advantage_over_token_count():
    lp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    loss, _ = policy_loss(lp, lp.detach(), torch.tensor([1.0, -2.0]), mask)
    loss.backward()
    torch.testing.assert_close(lp.grad, t([-0.25, -0.25, -0.25], [0.5, 0.0, 0.0]))


def test_ppo_clipping_hand_computed():
    # four one-token responses: (A, ratio) = (+1, 1.5) clipped, (-1, 1.5) unclipped, (-1, 0.5) clipped,
    # (+1, 0.5) unclipped
    old = torch.zeros(4, 1)
    lp = torch.tensor([[LOG(1.5)], [LOG(1.5)], [LOG(0.5)], [LOG(0.5)]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    mask = torch.ones(4, 1, dtype=torch.bool)
    loss, stats = policy_loss(lp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 + 0.8 - 0.5) / 4)
    assert stats["pg_clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    loss.backward()
    # d/dlogp of -A * ratio is -A * ratio; clipped tokens get no gradient
    torch.testing.assert_close(lp.grad[:, 0], torch.tensor([0.0, 1.5, 0.0, -0.5]) / 4)


def test_clip_higher_widens_only_the_upper_bound():
    lp = torch.tensor([[LOG(1.25)], [LOG(0.75)]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1, dtype=torch.bool)
    sym, _ = policy_loss(lp, torch.zeros(2, 1), adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    dapo, _ = policy_loss(lp, torch.zeros(2, 1), adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    assert sym.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert dapo.item() == pytest.approx((-1.25 + 0.8) / 2)


def test_kl_estimators_hand_computed():
    lp = torch.tensor([LOG(0.5)])
    ref = torch.tensor([LOG(0.25)])
    log_r = LOG(0.5)  # log pi_ref - log pi
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(-log_r)
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5 * log_r**2)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(0.5 - 1 - log_r)
    assert kl_estimate(lp, lp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(lp, ref, "k4")


def test_kl_penalty_and_entropy_bonus_enter_the_loss_per_token():
    lp = torch.full((1, 2), LOG(0.5))
    ref = torch.full((1, 2), LOG(0.25))
    ent = torch.tensor([[1.0, 3.0]])
    mask = torch.tensor([[True, True]])
    k3 = 0.5 - 1 - LOG(0.5)
    loss, stats = policy_loss(
        lp, lp, torch.tensor([2.0]), mask, ref_logprobs=ref, kl_coef=0.1, kl_estimator="k3",
        entropy=ent, entropy_coef=0.01,
    )
    assert loss.item() == pytest.approx(-2.0 + 0.1 * k3 - 0.01 * 2.0)
    assert stats["kl"].item() == pytest.approx(k3)
    assert stats["entropy"].item() == pytest.approx(2.0)
    assert stats["pg_loss"].item() == pytest.approx(-2.0)


def test_tis_weights_are_truncated_ratios_without_gradient():
    old = torch.tensor([[LOG(0.5), LOG(0.25), LOG(0.3)]], requires_grad=True)
    cal = torch.tensor([[LOG(0.25), LOG(0.5), LOG(0.3)]])
    w = tis_weights(old, cal, cap=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5, 1.0]]))
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        tis_weights(old, cal, cap=0.0)


def test_tis_weights_multiply_the_surrogate():
    lp = torch.zeros(1, 2, requires_grad=True)
    w = torch.tensor([[1.5, 0.5]])
    loss, stats = policy_loss(lp, lp.detach(), torch.tensor([1.0]), torch.ones(1, 2), tis_weights=w)
    assert loss.item() == pytest.approx(-(1.5 + 0.5) / 2)
    assert stats["tis_weight_mean"].item() == pytest.approx(1.0)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.75, -0.25]]))


def test_padding_garbage_reaches_neither_loss_nor_gradient():
    lp = torch.tensor([[-1.0, float("nan")], [-0.5, float("inf")]], requires_grad=True)
    old = torch.tensor([[-1.0, float("-inf")], [-0.7, float("nan")]])
    mask = torch.tensor([[True, False], [True, False]])
    ref = torch.tensor([[-1.2, float("nan")], [-0.1, 7.0]])
    ent = torch.tensor([[0.3, float("nan")], [0.2, float("inf")]])
    tis = torch.full((2, 2), float("nan")).masked_fill(mask, 1.0)
    for mode in LOSS_AGG_MODES:
        lp.grad = None
        loss, stats = policy_loss(
            lp, old, torch.tensor([1.0, -1.0]), mask, loss_agg=mode, max_response_len=2,
            ref_logprobs=ref, kl_coef=0.1, entropy=ent, entropy_coef=0.01, tis_weights=tis,
        )
        loss.backward()
        assert torch.isfinite(loss), mode
        assert all(torch.isfinite(v).all() for v in stats.values()), mode
        assert torch.isfinite(lp.grad).all() and lp.grad[:, 1].abs().sum() == 0, mode


def test_all_padding_micro_batch_gives_zero_loss_not_nan():
    lp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for mode in LOSS_AGG_MODES:
        loss, _ = policy_loss(lp, lp.detach(), torch.ones(2), mask, loss_agg=mode, max_response_len=3)
        assert loss.item() == 0.0


def _random_batch(n=7, width=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 1, 4, 6, 2, 9, 3])[:n]
    mask = torch.arange(width)[None, :] < lengths[:, None]
    lp = -torch.rand(n, width, generator=g) * 3
    old = lp + 0.3 * torch.randn(n, width, generator=g)  # ratios both inside and outside the clip range
    ref = lp + 0.2 * torch.randn(n, width, generator=g)
    ent = torch.rand(n, width, generator=g)
    adv = torch.randn(n, generator=g)
    return lp, old, ref, ent, adv, mask


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batched_losses_and_gradients_sum_to_the_full_batch(mode):
    lp, old, ref, ent, adv, mask = _random_batch()
    kwargs = dict(clip_eps_low=0.2, clip_eps_high=0.28, loss_agg=mode, kl_coef=0.05, entropy_coef=0.01,
                  max_response_len=12)

    full_lp = lp.clone().requires_grad_(True)
    full, _ = policy_loss(full_lp, old, adv, mask, ref_logprobs=ref, entropy=ent, **kwargs)
    full.backward()

    tokens, seqs = count_loss_units(mask)
    assert (tokens, seqs) == (34, 7)
    micro_lp = lp.clone().requires_grad_(True)
    total = torch.zeros(())
    for rows in ([0, 1], [2, 3, 4], [5, 6]):
        r = torch.tensor(rows)
        width = int(mask[r].sum(-1).max())  # each micro-batch is padded to its own longest response
        sl = (r[:, None], torch.arange(width)[None, :])
        loss, _ = policy_loss(
            micro_lp[sl], old[sl], adv[r], mask[sl], ref_logprobs=ref[sl], entropy=ent[sl],
            global_token_count=tokens, global_seq_count=seqs, **kwargs,
        )
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, full.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(micro_lp.grad, full_lp.grad, rtol=1e-6, atol=1e-8)


def test_without_global_counts_micro_batch_means_would_differ():
    # guards the design: token-mean over unequal micro-batches is not the full-batch token mean
    lp, old, _, _, adv, mask = _random_batch()
    full, _ = policy_loss(lp, old, adv, mask)
    a, _ = policy_loss(lp[:2], old[:2], adv[:2], mask[:2])
    b, _ = policy_loss(lp[2:], old[2:], adv[2:], mask[2:])
    assert not torch.isclose(a + b, full)


def test_seq_mean_token_sum_norm_requires_the_constant_max_len():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="max_response_len"):
        policy_loss(lp, lp, torch.ones(1), torch.ones(1, 2), loss_agg="seq-mean-token-sum-norm")


def test_bad_arguments_get_clear_errors():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown loss_agg"):
        policy_loss(lp, lp, torch.ones(2), torch.ones(2, 3), loss_agg="sum")
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(lp, lp, torch.ones(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        policy_loss(lp, lp, torch.ones(2), torch.ones(2, 3), kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(lp, lp, torch.ones(2), torch.ones(2, 3), entropy_coef=0.1)
    with pytest.raises(ValueError, match="global_token_count"):
        policy_loss(lp, lp, torch.ones(2), torch.ones(2, 3), global_token_count=0)
    with pytest.raises(ValueError, match="clip range"):
        policy_loss(lp, lp, torch.ones(2), torch.ones(2, 3), clip_eps_low=1.0)


def test_at_the_first_step_old_equals_new_so_ratio_is_one_and_approx_kl_zero():
    lp, _, _, _, adv, mask = _random_batch()
    _, stats = policy_loss(lp, lp, adv, mask)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["approx_kl"].item() == 0.0
    assert stats["pg_clipfrac"].item() == 0.0
    assert stats["num_tokens"].item() == 34


def test_dual_clip_bounds_negative_advantage_tokens_at_c_times_minus_a():
    # (A, ratio): (-1, 5) bounded at c = 3, (-1, 2) below the bound, (+1, 5) positive advantages never dual-clipped
    old = torch.zeros(3, 1)
    lp = torch.tensor([[LOG(5.0)], [LOG(2.0)], [LOG(5.0)]], requires_grad=True)
    adv = torch.tensor([-1.0, -1.0, 1.0])
    mask = torch.ones(3, 1, dtype=torch.bool)
    loss, stats = policy_loss(lp, old, adv, mask, clip_ratio_c=3.0)
    # per token: min(max(5, 1.2), 3) = 3; max(2, 1.2) = 2; max(-5, -1.2) = -1.2
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    assert stats["pg_clipfrac_lower"].item() == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(lp.grad[:, 0], torch.tensor([0.0, 2.0, 0.0]) / 3)  # the bounded token: no gradient
    plain, _ = policy_loss(lp.detach(), old, adv, mask)
    assert plain.item() == pytest.approx((5.0 + 2.0 - 1.2) / 3)  # off by default


def test_dual_clip_constant_must_exceed_one():
    lp = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        policy_loss(lp, lp, torch.tensor([-1.0]), torch.ones(1, 1, dtype=torch.bool), clip_ratio_c=0.5)
