"""Model provider: Qwen3 presets built as Megatron-Core GPTModels match transformers' Qwen3 exactly in size."""

import pytest
import torch

from megatron_rlvr.config import ModelConfig, ParallelConfig
from megatron_rlvr.qwen3.shapes import PRESETS, get_preset

PUBLISHED = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b"]


@pytest.fixture(scope="module")
def single_rank():
    from megatron_rlvr.distributed.parallel import init_distributed

    ctx = init_distributed({"policy": ParallelConfig()})
    yield ctx
    ctx.destroy()


def _megatron_meta_count(name: str) -> int:
    from megatron_rlvr.qwen3.provider import build_gpt_model, transformer_config

    shape, mc = get_preset(name), ModelConfig(preset=name, dtype="float32")
    with torch.device("meta"):
        model = build_gpt_model(shape, mc, config=transformer_config(shape, mc, perform_initialization=False))
    assert all(p.device.type == "meta" for p in model.parameters()), "weights must not be allocated"
    return sum(p.numel() for p in model.parameters())


def _hf_meta_count(name: str) -> int:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf_cfg = Qwen3Config(**get_preset(name).to_hf_config_dict())
    with torch.device("meta"):
        model = Qwen3ForCausalLM(hf_cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", PUBLISHED + ["tiny", "tiny-tied", "tiny-mem", "tiny-deep"])
def test_megatron_parameter_count_equals_transformers_qwen3(single_rank, name):
    megatron_count = _megatron_meta_count(name)
    assert megatron_count == _hf_meta_count(name)
    assert megatron_count == PRESETS[name].num_parameters()


def test_published_sizes_have_the_advertised_parameter_counts(single_rank):
    # Qwen3 model cards: 0.6B/1.7B/4B/8B/14B/32B total parameters (rounded).
    billions = {n: PRESETS[n].num_parameters() / 1e9 for n in PUBLISHED}
    expected = {"qwen3-0.6b": 0.6, "qwen3-1.7b": 1.7, "qwen3-4b": 4.0, "qwen3-8b": 8.2, "qwen3-14b": 14.8,
                "qwen3-32b": 32.8}
    for n in PUBLISHED:
        assert billions[n] == pytest.approx(expected[n], abs=0.05), n


@pytest.mark.parametrize("vpp, batched_on_gpu", [(1, True), (2, False)])
def test_interleaved_pipelines_never_batch_their_p2p_ops(monkeypatch, vpp, batched_on_gpu):
    # At PP=2 the previous and next stage are one peer, and a batch of sends/receives to one peer is matched in
    # posting order: interleaved schedules then swap activations and gradients (wrong losses on gloo and on
    # NCCL, 2x H200). Plain pipelines keep the batched ops on a GPU; on CPU nothing is batched.
    from megatron_rlvr.qwen3.provider import transformer_config

    shape = get_preset("tiny-deep")
    mc = ModelConfig(preset="tiny-deep", dtype="float32", parallel=ParallelConfig(pp=2, vpp=vpp))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert transformer_config(shape, mc).batch_p2p_comm is batched_on_gpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert transformer_config(shape, mc).batch_p2p_comm is False


def test_asking_for_batched_p2p_in_an_interleaved_pipeline_is_refused():
    from megatron_rlvr.qwen3.provider import transformer_config

    mc = ModelConfig(preset="tiny-deep", dtype="float32", parallel=ParallelConfig(pp=2, vpp=2),
                     megatron={"batch_p2p_comm": True})
    with pytest.raises(ValueError, match="batch_p2p_comm=True with parallel.vpp=2"):
        transformer_config(get_preset("tiny-deep"), mc)
