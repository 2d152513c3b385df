"""Micro-batch planning (update/micro_batching.py) and THD packing of rows (update/packing.py): plain unit tests."""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.update.micro_batching import gather_micro_batch, micro_batch_cost, plan_micro_batches, split_over_ranks
from megatron_rlvr.update.packing import lengths_from_mask, pack_rows

LENGTHS = torch.tensor([700, 30, 4096, 1200, 1, 64, 2048, 900, 333, 4096, 15, 1024, 77])


def _flat(parts):
    return sorted(int(r) for p in parts for r in p)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("budget", [4096, 5000, 9000])
def test_token_budget_plan_is_a_partition_and_respects_the_budget(packed, budget):
    rows = torch.arange(len(LENGTHS))
    plan = plan_micro_batches(rows, LENGTHS, micro_batch_size=4, max_tokens=budget, packed=packed)
    assert _flat(plan) == list(range(len(LENGTHS)))
    for mb in plan:
        assert micro_batch_cost(LENGTHS[mb], packed) <= budget or len(mb) == 1


def test_a_row_longer_than_the_budget_gets_a_micro_batch_of_its_own():
    plan = plan_micro_batches(torch.arange(3), torch.tensor([10, 50, 10]), 4, max_tokens=30, packed=True)
    assert sorted(map(tuple, (p.tolist() for p in plan))) == [(0, 2), (1,)]


def test_packing_needs_fewer_micro_batches_than_padding_for_ragged_lengths():
    rows = torch.arange(len(LENGTHS))
    packed = plan_micro_batches(rows, LENGTHS, 4, max_tokens=8192, packed=True)
    padded = plan_micro_batches(rows, LENGTHS, 4, max_tokens=8192, packed=False)
    assert len(packed) < len(padded)


def test_without_a_budget_micro_batches_are_micro_batch_size_rows_in_order():
    plan = plan_micro_batches(torch.arange(7), torch.ones(7, dtype=torch.long), 3, max_tokens=0, packed=True)
    assert [p.tolist() for p in plan] == [[0, 1, 2], [3, 4, 5], [6]]


def test_balanced_split_over_ranks_evens_out_tokens_and_covers_every_row():
    rows = torch.arange(len(LENGTHS))
    shares = split_over_ranks(rows, LENGTHS, 4, balanced=True)
    assert _flat(shares) == list(range(len(LENGTHS)))
    loads = [int(LENGTHS[s].sum()) for s in shares]
    strided = [int(LENGTHS[rows[r::4]].sum()) for r in range(4)]
    assert max(loads) - min(loads) <= int(LENGTHS.max())  # greedy LPT bound
    assert max(loads) - min(loads) < max(strided) - min(strided)


def test_unbalanced_split_is_the_round_robin_of_earlier_releases():
    rows = torch.tensor([5, 2, 7, 1, 0])
    shares = split_over_ranks(rows, torch.ones(8, dtype=torch.long), 2, balanced=False)
    assert [s.tolist() for s in shares] == [[5, 7, 0], [2, 1]]


def test_gather_trims_columns_to_the_longest_row_and_carries_lengths_when_packing():
    tokens = torch.arange(24).view(4, 6)
    adv = torch.arange(4.0)
    lengths = torch.tensor([6, 2, 3, 1])
    mb = gather_micro_batch(torch.tensor([1, 2]), dict(tokens=tokens, adv=adv, ref=None), lengths, pack=True,
                            trim=True)
    assert mb["tokens"].tolist() == [[6, 7, 8], [12, 13, 14]]
    assert mb["adv"].tolist() == [1.0, 2.0] and "ref" not in mb and mb["lengths"].tolist() == [2, 3]


def test_pack_rows_builds_cu_seqlens_positions_and_next_token_targets():
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [4, 0, 0, 0]])
    p = pack_rows(tokens, torch.tensor([3, 2, 1]))
    assert p.tokens.tolist() == [[5, 6, 7, 8, 9, 4]]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 6] and p.cu_seqlens.dtype == torch.int32
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]] and p.max_seqlen == 3
    # position t predicts t + 1 of the same sequence; the last position of each sequence predicts nothing (0)
    assert p.next_token_targets().tolist() == [6, 7, 0, 9, 0, 0]
    stats = torch.tensor([1.0, 2.0, 99.0, 3.0, 99.0, 99.0])  # per predicting position
    assert p.token_values_to_rows(stats).tolist() == [[0, 1, 2, 0], [0, 3, 0, 0], [0, 0, 0, 0]]


def test_pack_rows_refuses_lengths_outside_the_row():
    with pytest.raises(ValueError, match=r"in \[1, 4\]"):
        pack_rows(torch.zeros(2, 4, dtype=torch.long), torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        pack_rows(torch.zeros(2, 4, dtype=torch.long), torch.tensor([1]))


def test_lengths_from_mask_end_at_the_last_masked_token():
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert lengths_from_mask(mask).tolist() == [3, 1, 5]


def test_bench_length_distribution_has_the_asked_median_and_never_exceeds_its_max():
    from megatron_rlvr.bench.packing import sample_lengths

    x = sample_lengths("lognormal:median=1024,max=4096", 20000, seed=1)
    assert int(x.max()) <= 4096 and int(x.min()) >= 1
    assert abs(float(x.float().median()) - 1024) < 40
    assert torch.equal(sample_lengths("uniform:min=5,max=9", 50, seed=3), sample_lengths("uniform:min=5,max=9", 50, 3))
    assert torch.equal(sample_lengths("fixed:len=7", 3), torch.tensor([7, 7, 7]))


@pytest.mark.parametrize("spec,message", [("gamma:k=1", "unknown distribution"), ("lognormal:median=5", "needs"),
                                          ("uniform:min", "key=value")])
def test_bad_length_specs_are_refused_with_the_reason(spec, message):
    from megatron_rlvr.bench.packing import parse_length_spec

    with pytest.raises(ValueError, match=message):
        parse_length_spec(spec)


def test_a_negative_token_budget_is_a_config_error_naming_the_field():
    from megatron_rlvr.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="algorithm.max_tokens_per_micro_batch"):
        load_config(overrides=["algorithm.max_tokens_per_micro_batch=-1"])
    cfg = load_config(overrides=["algorithm.pack_sequences=true", "algorithm.max_tokens_per_micro_batch=4096"])
    assert cfg.algorithm.pack_sequences and cfg.algorithm.max_tokens_per_micro_batch == 4096
