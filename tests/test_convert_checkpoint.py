"""Checkpoint conversion end to end (tiny Qwen3 presets, random weights, CPU, real multi-rank Megatron runs).

One module-scoped pipeline, so the expensive multi-rank launches happen once:
  1. a Hugging Face folder written by transformers (bf16, several shards, a tokenizer file)
  2. `convert from-hf --tp 2 --pp 2` (4 ranks)
  3. a 2-rank job with the trainer's TrainableModel under four layouts (TP=2, TP=1 x DP=2, PP=2, PP=2 x VPP=2):
     it loads (2) into TP=2 and streams it live, saves trainer checkpoints of fresh tiny / tiny-tied (and
     tiny-deep for VPP) models under each layout, writes their live exports, and records Megatron's logits.
The tests then compare files and tensors in this process.
"""

import filecmp
import json
from pathlib import Path

import pytest
import torch

from megatron_rlvr.convert.hf_io import read_index_tensors
from megatron_rlvr.qwen3.hf import hf_config
from megatron_rlvr.qwen3.shapes import get_preset
from tests.helpers.dist import run_distributed

TOKENS = [[5, 17, 99, 3, 64, 127, 0, 42, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9]]


def make_hf_folder(path: Path, preset: str, dtype: torch.dtype, seed: int) -> Path:
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(hf_config(get_preset(preset), dtype))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.to(dtype).save_pretrained(str(path), max_shard_size="300KB")
    (path / "tokenizer_config.json").write_text('{"model_max_length": 256}\n')
    return path


def _distributed_job(root: str, imported: str) -> dict:
    """Runs on 2 ranks (see module docstring); returns rank 0's Megatron logits per preset."""
    from megatron.core import tensor_parallel

    from megatron_rlvr.config import ModelConfig, OptimConfig, ParallelConfig
    from megatron_rlvr.convert.to_hf import save_hf_from_live
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.distributed.parallel import init_distributed

    root = Path(root)
    layouts = {"tp2": ParallelConfig(tp=2), "tp1": ParallelConfig(tp=1), "pp2": ParallelConfig(pp=2),
               "vpp": ParallelConfig(pp=2, vpp=2)}
    ctx = init_distributed(layouts)

    def build(lay: str, preset: str) -> TrainableModel:
        cfg = ModelConfig(preset=preset, parallel=layouts[lay], dtype="float32", transformer_impl="local", init_seed=7)
        return TrainableModel(lay, cfg, OptimConfig(), ctx)

    # the from-hf checkpoint (written at TP=2 x PP=2, bf16) loads into the trainer at TP=2 (fp32)
    model = build("tp2", "tiny")
    model.load_checkpoint(imported, load_optimizer=False)
    with ctx.layout("tp2"):
        save_hf_from_live(model.model_chunks, model.shape, root / "imported_live")

    logits = {}
    for preset in ("tiny", "tiny-tied"):
        # tied embeddings with PP > 1 need a GPU in megatron-core 0.16.1 (LanguageModule calls .cuda())
        for lay in ("tp2", "tp1") + (("pp2",) if preset == "tiny" else ()):
            model = build(lay, preset)
            model.save_checkpoint(root / preset / lay / "policy", with_optimizer=True)
            with ctx.layout(lay):
                save_hf_from_live(model.model_chunks, model.shape, root / preset / f"live_{lay}")
                if lay == "tp2":
                    chunk = model.model_chunks[0].eval()
                    tokens = torch.tensor(TOKENS)
                    pos = torch.arange(tokens.shape[1]).expand_as(tokens)
                    with torch.no_grad():
                        local = chunk(tokens, pos, None)  # (b, s, V / tp)
                        logits[preset] = tensor_parallel.gather_from_tensor_model_parallel_region(local)
    # interleaved pipeline: 4 layers in 2 stages x 2 virtual chunks (rank 0 holds layers 0 and 2)
    model = build("vpp", "tiny-deep")
    model.save_checkpoint(root / "tiny-deep" / "vpp" / "policy", with_optimizer=False)
    with ctx.layout("vpp"):
        save_hf_from_live(model.model_chunks, model.shape, root / "tiny-deep" / "live_vpp")
    ctx.destroy()
    return logits


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from megatron_rlvr.convert.from_hf import import_hf

    root = tmp_path_factory.mktemp("convert")
    hf = make_hf_folder(root / "hf_in", "tiny", torch.bfloat16, seed=3)
    imported = import_hf(hf, root / "imported", tp=2, pp=2)
    logits = run_distributed(_distributed_job, world_size=2, args=(str(root), str(imported)), timeout=600)[0]
    return {"root": root, "hf": hf, "imported": imported, "logits": logits}


def _tensors(folder: Path) -> dict:
    return dict(read_index_tensors(folder))


def test_hf_to_megatron_tp2_pp2_to_hf_is_bit_identical(pipeline):
    from megatron_rlvr.convert.to_hf import export_checkpoint

    imported = pipeline["imported"]
    assert len(list(imported.glob("*.distcp"))) >= 4  # really written by 4 ranks
    assert (imported / "tokenizer" / "tokenizer_config.json").is_file()
    out = export_checkpoint(imported, pipeline["root"] / "hf_back")
    original, back = _tensors(pipeline["hf"]), _tensors(out)
    assert list(back) and set(back) == set(original)
    for name, t in original.items():
        assert back[name].dtype == torch.bfloat16 and torch.equal(back[name], t), name
    config = json.loads((out / "config.json").read_text())
    source = json.loads((pipeline["hf"] / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size",
                "tie_word_embeddings", "rope_parameters", "dtype"):
        assert config[key] == source[key], key


def test_from_hf_checkpoint_loads_into_the_trainer_and_streams_back_the_same_weights(pipeline):
    live = _tensors(pipeline["root"] / "imported_live")  # fp32 model loaded from the bf16 checkpoint
    original = _tensors(pipeline["hf"])
    assert set(live) == set(original)
    for name, t in original.items():
        assert live[name].dtype == torch.float32 and torch.equal(live[name], t.float()), name


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_exports_from_tp1_and_tp2_checkpoints_and_the_live_stream_are_identical_files(pipeline, preset):
    from megatron_rlvr.convert.to_hf import export_checkpoint

    root = pipeline["root"] / preset
    tp1 = export_checkpoint(root / "tp1", root / "hf_tp1")
    tp2 = export_checkpoint(root / "tp2", root / "hf_tp2")
    names = sorted(p.name for p in tp1.iterdir())
    assert names == sorted(p.name for p in tp2.iterdir()) == sorted(p.name for p in (root / "live_tp2").iterdir())
    assert any(n.endswith(".safetensors") for n in names) and "model.safetensors.index.json" in names
    match, mismatch, errors = filecmp.cmpfiles(tp1, tp2, names, shallow=False)
    assert mismatch == [] and errors == []
    match, mismatch, errors = filecmp.cmpfiles(tp2, root / "live_tp2", names, shallow=False)
    assert mismatch == [] and errors == []
    assert ("lm_head.weight" in _tensors(tp2)) == (preset == "tiny")


@pytest.mark.parametrize("preset,layout", [("tiny", "pp2"), ("tiny-deep", "vpp")])
def test_live_stream_of_a_pipeline_parallel_model_equals_its_offline_export(pipeline, preset, layout):
    from megatron_rlvr.convert.to_hf import export_checkpoint

    root = pipeline["root"] / preset
    offline = export_checkpoint(root / layout, root / f"hf_{layout}")
    names = sorted(p.name for p in offline.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(offline, root / f"live_{layout}", names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)
    layers = {int(n.split(".")[2]) for n in _tensors(offline) if n.startswith("model.layers.")}
    assert layers == set(range(get_preset(preset).num_hidden_layers))


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_exported_model_logits_in_transformers_equal_megatron_logits(pipeline, preset):
    from transformers import AutoModelForCausalLM

    from megatron_rlvr.convert.to_hf import export_checkpoint

    root = pipeline["root"] / preset
    out = export_checkpoint(root / "tp2", root / "hf_for_logits")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager").eval()
    assert type(model).__name__ == "Qwen3ForCausalLM"
    with torch.no_grad():
        hf_logits = model(torch.tensor(TOKENS)).logits
    megatron_logits = pipeline["logits"][preset]
    assert hf_logits.shape == megatron_logits.shape == (2, len(TOKENS[0]), get_preset(preset).vocab_size)
    assert (hf_logits - megatron_logits).abs().max().item() <= 1e-5
