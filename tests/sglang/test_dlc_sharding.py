"""Sharding never changes the result in SGLang: a step's requests split over engines (each shard generated alone,
with its global seed offset) give the responses of one call holding them all. (Named test_dlc_*: it uses the
session's shared engine, so it must run before test_engine_failures kills that engine.)"""

from __future__ import annotations

import pytest

from megatron_rlvr.rollout.types import SamplingParams

PROMPTS = [p for p in ([5, 17, 99, 3], [88, 1, 2], [7] * 9, [3, 4]) for _ in range(3)]  # 4 groups of 3


def test_shards_with_their_seed_offsets_reproduce_the_unsharded_call(engine, transport, hf_models):
    for name in ("policy", "memory"):  # the shared engine holds these weights whatever ran before
        transport.push(name, list(hf_models[name].state_dict().items()))
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, lam=0.5, seed=2024)
    whole = engine.generate(PROMPTS, sp)
    for cut in (3, 6, 9):  # two "engines": groups [0, cut/3) and the rest
        parts = []
        for start, stop in ((0, cut), (cut, len(PROMPTS))):
            part = SamplingParams(**{**sp.__dict__, "seed_offset": start})
            parts += engine.generate(PROMPTS[start:stop], part)
        assert [g.response_ids for g in parts] == [g.response_ids for g in whole], cut
        for a, b in zip(parts, whole):
            assert a.logprob_cal == pytest.approx(b.logprob_cal, abs=1e-5)
            assert a.logprob_policy == pytest.approx(b.logprob_policy, abs=1e-5)
    # and the offset matters: without it the second shard would redraw the first shard's streams
    unshifted = engine.generate(PROMPTS[6:], sp)
    assert [g.response_ids for g in unshifted] != [g.response_ids for g in whole[6:]]
