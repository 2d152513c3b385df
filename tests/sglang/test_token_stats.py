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


def test_the_sampler_refuses_memory_logits_that_alias_the_policy_logits():
    # SGLang's captured decode graphs hand logits processors one shared buffer; a memory stack writing there
    # would overwrite the policy's logits, and sampling would silently use the wrong distribution.
    import pytest
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    from megatron_rlvr.rollout.sglang.protocol import MEMORY_LOGITS_KEY
    from megatron_rlvr.rollout.sglang.sampler import DLCSampler

    shared = torch.randn(16, 32)  # the captured graph's buffer, padded to 16 rows; this step has 3
    out = LogitsProcessorOutput(next_token_logits=shared[:3], customized_info={MEMORY_LOGITS_KEY: shared})
    sampler = DLCSampler.__new__(DLCSampler)  # SGLang's Sampler.__init__ needs its tensor-parallel group
    with pytest.raises(RuntimeError, match="share storage with the policy logits"):
        sampler.forward(out, sampling_info=None, return_logprob=False, top_logprobs_nums=None,
                             token_ids_logprobs=None, positions=torch.zeros(3, dtype=torch.long))
