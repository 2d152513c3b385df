"""The sampler's per-token outputs travel through SGLang's own per-request collection and pickling unchanged."""

import pickle
import types

import torch

from megatron_rlvr.rollout.sglang.protocol import OUT_STATS


def test_sglang_collects_each_requests_row_as_plain_floats_that_pickle(monkeypatch):
    from sglang.srt.managers.scheduler_components.batch_result_processor import SchedulerBatchResultProcessor

    from megatron_rlvr.rollout.sglang.sampler import TokenStats

    steps = [torch.tensor([[-1.0, -1.5, 2.0], [-0.5, -0.25, 1.0]]),
             torch.tensor([[-2.0, -2.5, 3.0], [-0.75, -0.5, 0.5]])]
    reqs = [types.SimpleNamespace(customized_info=None) for _ in range(2)]
    for host in steps:
        out = types.SimpleNamespace(customized_info={OUT_STATS: TokenStats(host)})
        for i, req in enumerate(reqs):
            # SGLang's own code path: copies element i of every customized_info value into the request.
            SchedulerBatchResultProcessor._maybe_collect_customized_info(None, i, req, out)
    kept = pickle.loads(pickle.dumps([r.customized_info for r in reqs]))
    assert kept[0][OUT_STATS] == [(-1.0, -1.5, 2.0), (-2.0, -2.5, 3.0)]
    assert kept[1][OUT_STATS] == [(-0.5, -0.25, 1.0), (-0.75, -0.5, 0.5)]
    assert all(type(x) is float for row in kept[0][OUT_STATS] for x in row)
