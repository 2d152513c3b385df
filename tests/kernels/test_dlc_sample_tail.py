"""The lean stage-1 tail (kernels/dlc_sample_tail.py) draws what the plain tail and the reference draw.

On the CPU through Triton's interpreter (small shapes). Both tails run in each test, chosen by the launcher's
``VARIANT``; tokens must be equal, log-probabilities and entropy equal up to float32 summation order.
"""

import math

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample, dlc_sample_reference
from megatron_rlvr.kernels import dlc_sample_launcher as launcher

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _logits(rows, vocab, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    zp = (torch.randn(rows, vocab, generator=g) * scale).to(dtype)
    zm = (torch.randn(rows, vocab, generator=g) * scale).to(dtype)
    return zp, zm


def _both(monkeypatch, *args, **kwargs):
    """(lean, plain) outputs of one call, with fresh launch caches for each variant."""
    outs = []
    for variant in ("lean", "plain"):
        monkeypatch.setattr(launcher, "VARIANT", variant)
        launcher.clear_launch_caches()
        outs.append(dlc_sample(*args, **kwargs))
    return outs


def _assert_close(a, b, entropy):
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprob_cal, b.logprob_cal, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(a.logprob_policy, b.logprob_policy, atol=1e-5, rtol=1e-5, equal_nan=True)
    if entropy:
        torch.testing.assert_close(a.entropy, b.entropy, atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("vocab,rows", [(1, 1), (111, 3), (4099, 2), (151936 // 16, 1)])
@pytest.mark.parametrize("entropy", [False, True])
def test_lean_tail_draws_the_plain_tails_tokens_and_the_references(monkeypatch, vocab, rows, entropy):
    zp, zm = _logits(rows, vocab, seed=vocab + rows)
    kwargs = dict(lam=torch.linspace(0.0, 1.2, rows), temperature=torch.linspace(0.6, 1.3, rows),
                  seed=torch.arange(rows) + 3, offset=7, return_entropy=entropy)
    lean, plain = _both(monkeypatch, zp, zm, **kwargs)
    _assert_close(lean, plain, entropy)
    _assert_close(lean, dlc_sample_reference(zp, zm, **kwargs), entropy)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lean_tail_matches_for_half_precision_and_without_memory(monkeypatch, dtype):
    zp, zm = _logits(4, 2500, dtype=dtype, seed=4)
    lean, plain = _both(monkeypatch, zp, zm, lam=0.6, seed=torch.arange(4), offset=1, return_entropy=True)
    _assert_close(lean, plain, True)
    lean, plain = _both(monkeypatch, zp, None, seed=torch.arange(4), offset=1, return_entropy=True)
    _assert_close(lean, plain, True)
    torch.testing.assert_close(lean.logprob_cal, lean.logprob_policy)


@pytest.mark.parametrize("mask", [dict(tau=0.1), dict(top_k=7), dict(top_p=0.7), dict(tau=0.3, top_k=40)])
def test_lean_tail_respects_the_masks_like_the_plain_tail(monkeypatch, mask):
    zp, zm = _logits(3, 1500, seed=6)
    kwargs = dict(lam=0.8, seed=torch.arange(3), offset=5, return_entropy=True, **mask)
    lean, plain = _both(monkeypatch, zp, zm, **kwargs)
    _assert_close(lean, plain, True)
    _assert_close(lean, dlc_sample_reference(zp, zm, **kwargs), True)


def test_greedy_ties_go_to_the_smallest_id_across_quarters_of_the_winning_chunk(monkeypatch):
    # Ids 2 (quarter 0, position 2) and 257 (quarter 1, position 1): an argmax over positions first would pick 257.
    zp = torch.zeros(3, 1024)
    zp[0, [257, 2]] = 9.0
    zp[1, [259, 700, 1000]] = 9.0  # three quarters tie: 259 wins
    zp[2, :] = 1.0  # all equal: id 0
    lean, plain = _both(monkeypatch, zp, None, temperature=0.0)
    assert lean.tokens.tolist() == [2, 259, 0]
    _assert_close(lean, plain, False)


def test_lean_tail_over_several_loop_iterations_and_splits_equals_the_reference(monkeypatch):
    # One chunk per tile and 4 per split: each program's loop runs several iterations, each storing chunk values.
    monkeypatch.setattr(launcher, "INTERPRETER_ONE_TILE", False)
    monkeypatch.setattr(launcher, "MAX_TILE_CHUNKS", 2)
    monkeypatch.setattr(launcher, "PROGRAMS_PER_SM", 2)
    monkeypatch.setattr(launcher, "MIN_CHUNKS_PER_SPLIT", 1)
    zp, zm = _logits(1, 7000, seed=8)  # 7 chunks over 2 programs of 4 (the last one short), 2 per tile
    plan = launcher._split_plan(1, 7000, 0, zp.device)
    assert (plan.splits, plan.per_split, plan.tile) == (2, 4, 2)
    kwargs = dict(lam=0.4, temperature=0.8, seed=5, offset=3, return_entropy=True)
    lean, plain = _both(monkeypatch, zp, zm, **kwargs)
    _assert_close(lean, plain, True)
    _assert_close(lean, dlc_sample_reference(zp, zm, **kwargs), True)


def test_nan_rows_are_flagged_by_the_lean_tail(monkeypatch):
    zp, zm = _logits(3, 300, seed=2)
    zp[1, 17] = float("nan")
    lean, plain = _both(monkeypatch, zp, zm, lam=0.5, seed=torch.arange(3), check_nan=False)
    assert lean.tokens[1] == -1 and math.isnan(lean.logprob_cal[1]) and (lean.tokens[[0, 2]] >= 0).all()
    _assert_close(lean, plain, False)


def test_an_unknown_variant_is_an_error_naming_the_choices(monkeypatch):
    monkeypatch.setattr(launcher, "VARIANT", "fast")
    launcher.clear_launch_caches()
    with pytest.raises(ValueError, match="lean"):
        dlc_sample(*_logits(1, 50))


def test_lean_race_over_more_chunks_than_a_tile_has_thread_rows_equals_the_plain_steps(monkeypatch):
    # 88 chunks in one program, one chunk per tile: the plain race steps through them 32 at a time (3 steps), the
    # lean one takes all 88 in one block of 128.
    monkeypatch.setattr(launcher, "INTERPRETER_ONE_TILE", False)
    monkeypatch.setattr(launcher, "MAX_TILE_CHUNKS", 1)
    monkeypatch.setattr(launcher, "PROGRAMS_PER_SM", 1)
    zp, zm = _logits(1, 90000, seed=10)
    zp[:, 80 * 1024:81 * 1024] += 8.0  # nearly all mass in chunk 80: a race that missed chunks past 64 draws elsewhere
    plan = launcher._split_plan(1, 90000, 0, zp.device)
    assert (plan.splits, plan.per_split, plan.tile) == (1, 88, 1)
    monkeypatch.setattr(launcher, "VARIANT", "lean")
    assert launcher._race_block(plan) == 128
    kwargs = dict(lam=0.3, seed=torch.tensor([9]), offset=4, return_entropy=True)
    lean, plain = _both(monkeypatch, zp, zm, **kwargs)
    _assert_close(lean, plain, True)
    _assert_close(lean, dlc_sample_reference(zp, zm, **kwargs), True)
    assert 80 * 1024 <= int(lean.tokens[0]) < 81 * 1024
