"""Checkpoint conversion: bad input gives one clear error and leaves no output folder; CLI and path resolution."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from megatron_rlvr.convert import ConversionError
from megatron_rlvr.convert.cli import main as convert_main
from megatron_rlvr.convert.from_hf import import_hf
from megatron_rlvr.convert.hf_io import atomic_output_dir, read_index_tensors
from megatron_rlvr.convert.to_hf import export_checkpoint
from megatron_rlvr.qwen3.hf import hf_config
from megatron_rlvr.qwen3.shapes import get_preset


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A sharded bf16 Hugging Face folder of `tiny` and its Megatron conversion (1 rank, in this process)."""
    from transformers import Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(11)
    model = Qwen3ForCausalLM(hf_config(get_preset("tiny"), torch.bfloat16)).to(torch.bfloat16)
    model.save_pretrained(str(root / "hf"), max_shard_size="300KB")
    import_hf(root / "hf", root / "ckpt")
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_no_output(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


# ------------------------------------------------------------------------------------------------ from-hf
def test_from_hf_with_a_missing_shard_fails_naming_it(sources, tmp_path):
    hf = _copy(sources / "hf", tmp_path / "hf")
    (hf / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"model-00002-of-00004.safetensors.*missing"):
        import_hf(hf, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


def test_from_hf_with_a_truncated_shard_fails_naming_it(sources, tmp_path):
    hf = _copy(sources / "hf", tmp_path / "hf")
    shard = hf / "model-00003-of-00004.safetensors"
    os.truncate(shard, shard.stat().st_size - 1000)
    with pytest.raises(ConversionError, match=r"model-00003-of-00004.safetensors is damaged or truncated"):
        import_hf(hf, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("field,value,message", [
    ("num_hidden_layers", 3, "do not match config.json"),
    ("intermediate_size", 512, "config.json does not match the weights"),
    ("tie_word_embeddings", True, "lm_head.weight differs from model.embed_tokens.weight"),
])
def test_from_hf_with_a_config_that_does_not_match_the_weights_fails(sources, tmp_path, field, value, message):
    hf = _copy(sources / "hf", tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    config[field] = value
    config.pop("layer_types")  # transformers re-derives it; a stale one would make the config itself invalid
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=message):
        import_hf(hf, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


def test_from_hf_of_an_unknown_architecture_fails(sources, tmp_path):
    hf = _copy(sources / "hf", tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"unsupported architecture.*llama"):
        import_hf(hf, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


def test_from_hf_checks_the_preset_and_the_parallel_layout(sources, tmp_path):
    with pytest.raises(ConversionError, match=r"does not match preset 'tiny-tied'.*tie_word_embeddings"):
        import_hf(sources / "hf", tmp_path / "out", preset="tiny-tied")
    with pytest.raises(ConversionError, match=r"--tp 3 does not divide num_key_value_heads=2"):
        import_hf(sources / "hf", tmp_path / "out", tp=3)
    with pytest.raises(ConversionError, match=r"--pp 4 does not divide num_hidden_layers=2"):
        import_hf(sources / "hf", tmp_path / "out", pp=4)
    from megatron_rlvr.convert.from_hf import check_layout

    with pytest.raises(ConversionError, match=r"tied embeddings.*use --pp 1"):
        check_layout(get_preset("tiny-tied"), tp=1, pp=2)
    _assert_no_output(tmp_path / "out")


def test_from_hf_output_records_the_matching_preset(sources):
    info = json.loads((sources / "ckpt" / "model_info.json").read_text())
    assert info["preset"] == "tiny" and info["has_optimizer"] is False and info["dtype"] == "bfloat16"
    assert info["shape"]["num_hidden_layers"] == 2


# ------------------------------------------------------------------------------------------------ to-hf
def test_to_hf_with_a_missing_checkpoint_file_fails_naming_it(sources, tmp_path):
    ckpt = _copy(sources / "ckpt", tmp_path / "ckpt")
    victim = sorted(ckpt.glob("*.distcp"))[0]
    victim.unlink()
    with pytest.raises(ConversionError, match=rf"{victim.name} is missing"):
        export_checkpoint(ckpt, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


def test_to_hf_with_a_truncated_checkpoint_file_fails_naming_it(sources, tmp_path):
    ckpt = _copy(sources / "ckpt", tmp_path / "ckpt")
    victim = max(ckpt.glob("*.distcp"), key=lambda p: p.stat().st_size)
    os.truncate(victim, victim.stat().st_size // 2)
    with pytest.raises(ConversionError, match=rf"{victim.name} is truncated"):
        export_checkpoint(ckpt, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("field,value,message", [
    ("num_hidden_layers", 3, "implies"),
    ("hidden_size", 64, "implies"),
    ("tie_word_embeddings", True, "does not have"),
])
def test_to_hf_with_model_info_that_does_not_match_the_checkpoint_fails(sources, tmp_path, field, value, message):
    ckpt = _copy(sources / "ckpt", tmp_path / "ckpt")
    info = json.loads((ckpt / "model_info.json").read_text())
    info["shape"][field] = value
    (ckpt / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(ConversionError, match=rf"{message}.*model info does not match the checkpoint"):
        export_checkpoint(ckpt, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


def test_to_hf_of_an_unknown_architecture_fails(sources, tmp_path):
    ckpt = _copy(sources / "ckpt", tmp_path / "ckpt")
    info = json.loads((ckpt / "model_info.json").read_text())
    info["shape"]["num_experts"] = 8
    (ckpt / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(ConversionError, match=r"unsupported architecture.*num_experts"):
        export_checkpoint(ckpt, tmp_path / "out")
    _assert_no_output(tmp_path / "out")


def test_existing_output_is_kept_unless_overwrite_is_given(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        export_checkpoint(sources / "ckpt", out)
    assert (out / "keep.txt").read_text() == "mine"
    export_checkpoint(sources / "ckpt", out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    _assert_no_output(tmp_path / "never")


def test_a_failure_while_writing_removes_the_partial_folder(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output_dir(out) as tmp:
            (tmp / "model-00001-of-00002.safetensors").write_bytes(b"partial")
            raise RuntimeError("disk full")
    _assert_no_output(out)


# ------------------------------------------------------------------------------------------------ CLI
def _trainer_layout(sources: Path, root: Path) -> Path:
    """<run>/checkpoints/{iter_0000003/{policy,tokenizer},latest} around the converted model."""
    it = root / "run" / "checkpoints" / "iter_0000003"
    shutil.copytree(sources / "ckpt", it / "policy")
    (it / "tokenizer").mkdir()
    (it / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (root / "run" / "checkpoints" / "latest").write_text("iter_0000003\n")
    return root / "run"


def test_cli_to_hf_resolves_step_and_latest_and_copies_the_tokenizer(sources, tmp_path, capsys):
    run = _trainer_layout(sources, tmp_path)
    assert convert_main(["to-hf", "--ckpt", str(run), "--step", "3", "--out", str(tmp_path / "a")]) == 0
    assert convert_main(["to-hf", "--ckpt", str(run / "checkpoints"), "--out", str(tmp_path / "b"),
                         "--max-shard-size", "200KB"]) == 0
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    a, b = dict(read_index_tensors(tmp_path / "a")), dict(read_index_tensors(tmp_path / "b"))
    assert len(list((tmp_path / "b").glob("model-*.safetensors"))) > 1  # the smaller shard limit took effect
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    original = dict(read_index_tensors(sources / "hf"))
    assert all(torch.equal(a[k], original[k]) for k in original)


def test_cli_reports_bad_input_in_one_line_with_exit_status_2(sources, tmp_path, capsys):
    run = _trainer_layout(sources, tmp_path)
    code = convert_main(["to-hf", "--ckpt", str(run), "--model", "memory", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no 'memory' model checkpoint" in err
    code = convert_main(["to-hf", "--ckpt", str(run), "--step", "9", "--out", str(tmp_path / "o")])
    assert code == 2 and "iter_0000009" in capsys.readouterr().err
    _assert_no_output(tmp_path / "o")
