"""Weight sync, in-process transport (embedded engine): both models pushed, outputs change as a reference predicts.

The tensor and broadcast transports have the same test against real SGLang engines in tests/sglang
(test_bucketed_weight_update.py, test_rollout_server_e2e.py); choosing a transport is tested here for all three.
"""

from __future__ import annotations

import pytest
import torch

from megatron_rlvr.qwen3.hf import build_qwen3
from megatron_rlvr.qwen3.shapes import get_preset
from megatron_rlvr.rollout.embedded import EmbeddedEngine
from megatron_rlvr.rollout.types import SamplingParams
from megatron_rlvr.weight_sync import Broadcast, InProcessCopy, TensorBuckets, build_transport, buckets
from tests.sglang.reference import greedy_dlc

TINY, MEM = get_preset("tiny"), get_preset("tiny-mem")
PROMPTS = [[1, 97, 98, 99, 58], [1, 100, 58]]
LAM, N = 0.7, 8


def _sharp(shape, seed):
    """A transformers Qwen3 with weights large enough that greedy decoding has no near-ties."""
    model = build_qwen3(shape, torch.float32, torch.device("cpu"), seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08 if "embed" in name or "lm_head" in name else 0.05,
                          generator=torch.Generator().manual_seed(seed * 1000 + len(name)))
    return model


def _greedy(engine):
    return engine.generate(PROMPTS, SamplingParams(max_new_tokens=N, temperature=0.0, lam=LAM))


def _assert_decodes_like(gens, policy, memory):
    for prompt, g in zip(PROMPTS, gens):
        toks, lp_cal, lp_pol, _ = greedy_dlc(policy, memory, prompt, LAM, N)
        assert g.response_ids == toks
        assert g.logprob_cal == pytest.approx(lp_cal, abs=1e-5)
        assert g.logprob_policy == pytest.approx(lp_pol, abs=1e-5)


def test_in_process_copy_pushes_both_models_and_the_engine_then_decodes_like_the_reference():
    engine = EmbeddedEngine(TINY, MEM, init_seed=5)
    transport = build_transport(engine)
    assert isinstance(transport, InProcessCopy)
    policy, memory = _sharp(TINY, 1), _sharp(MEM, 2)
    before = _greedy(engine)
    pushed = transport.push("memory", memory.named_parameters())
    assert pushed == sum(p.numel() * p.element_size() for p in memory.parameters())
    transport.push("policy", policy.named_parameters())
    after = _greedy(engine)
    assert [g.response_ids for g in after] != [g.response_ids for g in before]
    _assert_decodes_like(after, policy, memory)
    # a second push of other weights changes the outputs again, as the reference of those weights says
    policy2 = _sharp(TINY, 3)
    transport.push("policy", policy2.named_parameters())
    _assert_decodes_like(_greedy(engine), policy2, memory)


def test_a_wrong_name_fails_by_name_and_leaves_the_engine_untouched():
    engine = EmbeddedEngine(TINY, MEM, init_seed=5)
    before = _greedy(engine)
    with pytest.raises(ValueError, match="unknown tensor 'model.layers.0.attn.wq.weight'"):
        build_transport(engine).push("policy", [("model.norm.weight", torch.zeros(TINY.hidden_size)),
                                                ("model.layers.0.attn.wq.weight", torch.zeros(1))])
    assert [g.response_ids for g in _greedy(engine)] == [g.response_ids for g in before]


class _FakeServers:
    """Stands in only for the *choice* of transport (no tensors move): attached servers' receiving ends."""

    server_urls = ["http://a", "http://b"]

    def __init__(self, placement):
        self.placement = placement

    def pause_generation(self): ...
    def continue_generation(self): ...
    def flush_cache(self): ...
    def receive_tensors(self, bucket): ...
    def weight_group_ranks(self): ...
    def join_weight_group(self, *a): ...
    def receive_broadcast(self, *a): ...


def test_the_transport_is_chosen_by_engine_and_placement(monkeypatch):
    assert isinstance(build_transport(EmbeddedEngine(TINY, None)), InProcessCopy)
    assert isinstance(build_transport(_FakeServers("colocated"), bucket_mb=1), TensorBuckets)
    made = []
    monkeypatch.setattr(Broadcast, "__init__", lambda self, *a, **k: made.append(a) or None)
    assert isinstance(build_transport(_FakeServers("dedicated"), bucket_mb=1), Broadcast) and made
    assert build_transport(None) is None  # a rank that hosts no engine only takes part in the gathers


def test_buckets_respect_the_byte_budget_and_keep_order():
    tensors = [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([10, 10, 30, 5, 1])]
    out = list(buckets(tensors, bucket_bytes=80))
    assert [[n for n, _ in b] for b in out] == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(buckets(tensors, 0))


class _RecordingReceiver:
    """The receiving end of a colocated SGLang engine, recording the calls a push makes (no tensors move)."""

    def __init__(self):
        self.calls: list = []

    def pause_generation(self):
        self.calls.append("pause")

    def continue_generation(self):
        self.calls.append("continue")

    def flush_cache(self):
        self.calls.append("flush")

    def receive_tensors(self, bucket):
        self.calls.append(("bucket", [name for name, _ in bucket]))


def test_a_tensor_push_pauses_generation_loads_every_bucket_then_flushes_unless_a_later_push_will():
    receiver = _RecordingReceiver()
    transport = TensorBuckets(receiver, {"policy": TINY, "memory": MEM}, bucket_bytes=4 * TINY.hidden_size)
    norm = [("model.norm.weight", torch.ones(TINY.hidden_size)), ("model.layers.0.input_layernorm.weight",
                                                                    torch.ones(TINY.hidden_size))]
    transport.push("policy", norm, flush_cache=False)  # push_weights' first model: the memory's push flushes
    assert receiver.calls[0] == "pause" and receiver.calls[-1] == "continue" and "flush" not in receiver.calls
    assert [c for c in receiver.calls if isinstance(c, tuple)] == [
        ("bucket", ["policy.model.norm.weight"]), ("bucket", ["policy.model.layers.0.input_layernorm.weight"])]
    receiver.calls.clear()
    transport.push("memory", [("model.norm.weight", torch.ones(MEM.hidden_size))])
    assert receiver.calls == ["pause", ("bucket", ["memory.model.norm.weight"]), "flush", "continue"]
