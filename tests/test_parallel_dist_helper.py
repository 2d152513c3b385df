"""Tests of the multi-rank test launcher (tests/helpers/dist.py) that the parallel tests build on."""

import pytest

from tests.helpers.dist import DistributedRunError, run_distributed


def _allreduce_rank(scale: float) -> tuple[int, float]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1) * scale])
    dist.all_reduce(t)
    return dist.get_rank(), t.item()


def _fail_on_rank_one() -> None:
    import os
    import time

    if os.environ["RANK"] == "1":
        raise ValueError("boom on rank one")
    time.sleep(60)  # rank 0 would wait forever for a peer; the launcher must kill it


def _sleep_forever() -> None:
    import time

    time.sleep(600)


def test_every_rank_runs_and_returns_its_value_in_rank_order():
    assert run_distributed(_allreduce_rank, world_size=2, args=(2.0,), timeout=60) == [(0, 6.0), (1, 6.0)]


def test_a_failing_rank_kills_the_others_and_reports_its_traceback():
    with pytest.raises(DistributedRunError, match=r"(?s)rank\(s\) \[1\] failed.*boom on rank one"):
        run_distributed(_fail_on_rank_one, world_size=2, timeout=50)


def test_the_timeout_kills_every_rank():
    with pytest.raises(DistributedRunError, match="timed out after 2 s"):
        run_distributed(_sleep_forever, world_size=2, timeout=2)
