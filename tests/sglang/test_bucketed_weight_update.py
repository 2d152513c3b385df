"""Live weight updates reach the running engine: new weights change outputs exactly as the reference says."""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.rollout.types import SamplingParams

from .conftest import hf_qwen3
from .reference import greedy_dlc

PROMPTS = [[5, 17, 99, 3], [88, 1, 2]]


def _greedy(engine, lam=0.7, n=8):
    return engine.generate(PROMPTS, SamplingParams(max_new_tokens=n, temperature=0.0, lam=lam))


def _assert_matches(gens, policy, memory, lam=0.7, n=8):
    for prompt, g in zip(PROMPTS, gens):
        toks, lp_cal, lp_pol, _ = greedy_dlc(policy, memory, prompt, lam, n)
        assert g.response_ids == toks
        assert max(abs(a - b) for a, b in zip(g.logprob_cal, lp_cal)) < 1e-5
        assert max(abs(a - b) for a, b in zip(g.logprob_policy, lp_pol)) < 1e-5


def test_tensor_buckets_push_memory_then_policy_and_outputs_change_as_the_reference_predicts(engine, transport,
                                                                                              hf_models, shapes):
    policy_shape, memory_shape = shapes
    before = _greedy(engine)
    new_memory, new_policy = hf_qwen3(memory_shape, 3), hf_qwen3(policy_shape, 4)
    try:
        # 1 MiB buckets in the fixture: the update arrives in several buckets
        transport.push("memory", list(new_memory.state_dict().items()))
        after_memory = _greedy(engine)
        _assert_matches(after_memory, hf_models["policy"], new_memory)
        # the policy is untouched by a memory update: its log-probs of the tokens are the old policy's
        assert [g.response_ids for g in after_memory] != [g.response_ids for g in before]

        transport.push("policy", list(new_policy.state_dict().items()))
        _assert_matches(_greedy(engine), new_policy, new_memory)
    finally:
        transport.push("memory", list(hf_models["memory"].state_dict().items()))
        transport.push("policy", list(hf_models["policy"].state_dict().items()))
    _assert_matches(_greedy(engine), hf_models["policy"], hf_models["memory"])


def test_both_models_pushed_with_one_flush_after_the_last_decode_like_the_reference(engine, transport, hf_models,
                                                                                   shapes):
    """push_weights' order: the first model's push leaves the prefix cache, the last one flushes it. The prompts'
    KV cached under the old weights (the greedy run before) must not survive into the new weights' outputs."""
    policy_shape, memory_shape = shapes
    _greedy(engine)  # fills the radix cache with these prompts' KV under the current weights
    new_policy, new_memory = hf_qwen3(policy_shape, 6), hf_qwen3(memory_shape, 7)
    try:
        transport.push("policy", list(new_policy.state_dict().items()), flush_cache=False)
        transport.push("memory", list(new_memory.state_dict().items()))
        _assert_matches(_greedy(engine), new_policy, new_memory)
    finally:
        transport.push("policy", list(hf_models["policy"].state_dict().items()), flush_cache=False)
        transport.push("memory", list(hf_models["memory"].state_dict().items()))
    _assert_matches(_greedy(engine), hf_models["policy"], hf_models["memory"])


def test_update_with_a_non_qwen3_name_is_rejected_before_reaching_the_engine(engine, transport):
    with pytest.raises(ValueError, match="not a Hugging Face Qwen3 parameter name"):
        transport.push("policy", [("model.layers.0.attn.wq.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="model must be one of"):
        transport.push("critic", [("model.norm.weight", torch.zeros(1))])
