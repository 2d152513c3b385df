"""Rollout layout: which ranks host engines, and how a step's groups and a server pool's requests are split."""

from __future__ import annotations

import pytest

from megatron_rlvr.rollout.layout import RolloutLayout
from megatron_rlvr.rollout.sglang.remote import chunks_by_load


@pytest.mark.parametrize("world,tp,hosts", [(1, 1, [0]), (4, 1, [0, 1, 2, 3]), (8, 2, [0, 2, 4, 6]), (8, 8, [0])])
def test_colocated_engines_take_rollout_tp_ranks_each_hosted_by_the_first(world, tp, hosts):
    layout = RolloutLayout(world, tp)
    assert layout.hosts == hosts and layout.num_engines == world // tp
    assert [layout.engine_index(r) for r in range(world)] == [hosts.index(r) if r in hosts else None
                                                               for r in range(world)]


def test_dedicated_servers_are_driven_from_rank_0_alone():
    assert RolloutLayout(16, tp=3, dedicated=True).hosts == [0]


@pytest.mark.parametrize("groups,engines", [(7, 2), (7, 4), (3, 4), (64, 8), (1, 1)])
def test_shards_are_contiguous_near_equal_and_cover_every_group_once(groups, engines):
    layout = RolloutLayout(engines)
    shards = [layout.shard(groups, k) for k in range(engines)]
    assert [g for sh in shards for g in sh] == list(range(groups))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_a_tp_that_does_not_divide_the_world_is_refused():
    with pytest.raises(ValueError, match="divide the world size"):
        RolloutLayout(6, tp=4)


def test_server_chunks_hold_whole_groups_and_several_per_server():
    chunks = chunks_by_load(n_requests=64 * 8, n_servers=4, unit=8)
    assert [i for c in chunks for i in c] == list(range(512))
    assert all(c.start % 8 == 0 and len(c) % 8 == 0 for c in chunks)
    assert len(chunks) >= 4 * 4  # a pull queue: a faster server takes more chunks
    assert chunks_by_load(5, 8) == [range(k, k + 1) for k in range(5)]  # fewer requests than servers
