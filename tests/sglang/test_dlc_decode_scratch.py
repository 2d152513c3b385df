"""While the memory stack is enqueued in a decode forward on SGLang's triton backend, it uses split-KV scratch of its
own, sized by its own query heads, and no KV-store helper stream shared with the policy; everything is restored
afterwards. (The CUDA-stream overlap itself is tested on a GPU: test_gpu_overlap.py.)"""

import types

import pytest
import torch


class TritonAttnBackend:  # matched by class name, like SGLang's backend
    pass


@pytest.fixture
def decode_setup(monkeypatch):
    from sglang.srt.layers.attention.triton_backend import ForwardMetadata

    from megatron_rlvr.rollout.sglang.models import dlc_qwen3

    fields = {f: None for f in ForwardMetadata.__dataclass_fields__}
    meta = ForwardMetadata(**{**fields, "attn_logits": torch.zeros(4, 16, 8, 128), "attn_lse": torch.zeros(4, 16, 8),
                              "kv_indptr": torch.arange(5), "num_kv_splits": torch.ones(4, dtype=torch.int32)})
    backend = TritonAttnBackend()
    backend.dcp_size = 1
    backend.forward_metadata = meta
    helper = object()
    backend.token_to_kv_pool = types.SimpleNamespace(alt_stream=helper)
    monkeypatch.setattr(dlc_qwen3, "_attn_backend", lambda: backend)
    monkeypatch.setattr(dlc_qwen3, "get_tensor_model_parallel_world_size", lambda: 1)
    batch = types.SimpleNamespace(forward_mode=types.SimpleNamespace(is_decode=lambda: True))
    return dlc_qwen3, backend, meta, helper, batch


def test_memory_stack_decodes_with_its_own_scratch_sized_by_its_heads(decode_setup):
    dlc_qwen3, backend, meta, helper, batch = decode_setup
    wider_memory = types.SimpleNamespace(num_attention_heads=32)  # the policy-sized scratch has 16 heads
    with dlc_qwen3._private_decode_scratch(batch, wider_memory):
        inside = backend.forward_metadata
        assert inside.attn_logits.shape == (4, 32, 8, 128) and inside.attn_lse.shape == (4, 32, 8)
        assert inside.attn_logits.data_ptr() != meta.attn_logits.data_ptr()
        assert inside.kv_indptr is meta.kv_indptr and inside.num_kv_splits is meta.num_kv_splits  # same batch
        assert backend.token_to_kv_pool.alt_stream is None
    assert backend.forward_metadata is meta
    assert backend.token_to_kv_pool.alt_stream is helper


def test_other_batches_and_backends_are_left_alone(decode_setup):
    dlc_qwen3, backend, meta, helper, batch = decode_setup
    memory = types.SimpleNamespace(num_attention_heads=8)
    extend = types.SimpleNamespace(forward_mode=types.SimpleNamespace(is_decode=lambda: False))
    with dlc_qwen3._private_decode_scratch(extend, memory):
        assert backend.forward_metadata is meta and backend.token_to_kv_pool.alt_stream is helper
    backend.forward_metadata = meta.__class__(**{**meta.__dict__, "swa_attn_logits": torch.zeros(1)})
    swa_meta = backend.forward_metadata
    with dlc_qwen3._private_decode_scratch(batch, memory):  # sliding-window layouts keep SGLang's buffers
        assert backend.forward_metadata is swa_meta
