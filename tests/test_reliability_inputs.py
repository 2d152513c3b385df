"""Damaged or hostile inputs get one line naming the file/field, the problem and the fix, and never cost a complete
metrics line or output folder: metrics.jsonl tails, config values and YAML files, the run-folder lock, over-long
prompts, and the Hugging Face converters (NaN weights, layer counts, half-written checkpoints, stale tmp folders)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_rlvr.config import ConfigError, load_config
from megatron_rlvr.errors import RunError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- metrics.jsonl
def _rows(n: int) -> str:
    return "".join(json.dumps({"step": i, "reward/mean": 0.5 + i}) + "\n" for i in range(n))


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_naming_the_file(tmp_path, capsys):
    from megatron_rlvr.run.metrics import MetricsLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(3) + '{"step": 3, "rew')  # the disk filled up during the append of step 3
    cfg = load_config(None, ["logging.tensorboard=false"])
    logger = MetricsLogger(tmp_path, cfg, resume_step=3)
    assert [r["step"] for r in logger.history] == [0, 1, 2]
    assert f"{path} line 4 is torn" in capsys.readouterr().err
    logger.log(3, {"reward/mean": 3.5})
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_a_torn_tail_does_not_stop_a_fresh_start_and_the_old_metrics_are_kept(tmp_path):
    from megatron_rlvr.run.metrics import MetricsLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(5) + '{"st')
    MetricsLogger(tmp_path, load_config(None, ["logging.tensorboard=false"]), resume_step=0)
    assert path.read_text() == ""
    (backup,) = tmp_path.glob("metrics.jsonl.replaced-*")
    assert backup.read_text().startswith(_rows(5))


def test_a_damaged_metrics_line_before_the_end_is_an_error_naming_file_and_line(tmp_path):
    from megatron_rlvr.run.metrics import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(2) + "garbage\n" + _rows(1))
    with pytest.raises(RunError, match=rf"{path} line 3 is not a metrics row"):
        read_metrics(path)


@pytest.fixture
def full_tmpfs(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_an_append_to_a_full_disk_leaves_no_torn_line(full_tmpfs):
    from megatron_rlvr.run.metrics import append_line

    path = full_tmpfs / "metrics.jsonl"
    path.write_text(_rows(2))
    filler = full_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk up
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    line = json.dumps({"step": 2, "pad": "y" * 20000}) + "\n"  # larger than any space left
    with pytest.raises(RunError, match=rf"appending to {path} failed.*disk may be full"):
        append_line(path, line)
    assert path.read_text() == _rows(2)


# ----------------------------------------------------------------------------------------------- config and YAML
@pytest.mark.parametrize("field", ["optimizer.policy.lr", "optimizer.memory.adam_eps", "dlc.lam",
                                   "rollout.temperature", "rollout.top_p", "algorithm.clip_eps_high",
                                   "algorithm.iac_alpha", "warm_start.lr", "eval.temperature"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_float_values_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=rf"^config error: {field}=(-?inf|nan): must be a finite number"):
        load_config(None, [f"{field}={value}"])


def test_plausibility_tau_null_is_still_allowed():
    assert load_config(None, ["dlc.plausibility_tau=null"]).dlc.plausibility_tau is None


def test_a_yaml_syntax_error_names_file_line_and_column_in_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3\nrollout:\n  group_size: 4\n   temperature: 1.0\n")
    res = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "train", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"{path}:4:" in res.stderr and "YAML syntax error" in res.stderr and "<unicode string>" not in res.stderr


def test_allow_config_change_names_must_be_config_fields():
    with pytest.raises(ConfigError, match=r"checkpoint.allow_config_change='rollout.group_sise': not a config field"):
        load_config(None, ["checkpoint.allow_config_change=[rollout.group_sise]"])


# ----------------------------------------------------------------------------------------------- run-folder lock
def test_the_run_folder_lock_names_its_holder_and_dies_with_it(tmp_path):
    from megatron_rlvr.run.guard import lock_run_dir

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from megatron_rlvr.run.guard import lock_run_dir\n"
        f"lock_run_dir(Path({str(tmp_path)!r})); print('locked', flush=True); time.sleep(60)\n")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=rf"run_dir {tmp_path} is in use by another train process \(pid "
                                           rf"{holder.pid} on {socket.gethostname()}"):
            lock_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(tmp_path)  # the kernel dropped the dead holder's lock: no stale lock to clean up


# ----------------------------------------------------------------------------------------------- prompts
def test_an_over_long_math_prompt_is_refused_at_load_naming_the_line_or_skipped(tmp_path):
    from megatron_rlvr.tasks import CharTokenizer, DatasetError, MathTask

    path = tmp_path / "train.jsonl"
    rows = [{"prompt": "1+1?", "answer": "2"}, {"prompt": "x" * 300, "answer": "3"}, {"prompt": "2+2?", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match=rf"{path}:2: field 'prompt': the prompt is 30\d tokens, more than the "
                                           r"248 that fit"):
        MathTask(str(path), CharTokenizer(errors="replace"), max_prompt_tokens=248)
    task = MathTask(str(path), CharTokenizer(errors="replace"), skip_malformed=True, max_prompt_tokens=248)
    assert [e.prompt for e in task.prompts] == ["1+1?", "2+2?"] and task.num_skipped == 1


def test_the_prompt_budget_is_the_context_minus_the_response_length():
    from megatron_rlvr.run.runtime import prompt_budget

    limit, reason = prompt_budget(load_config(None, ["rollout.max_new_tokens=8"]))
    assert limit == 256 - 8 and "max_new_tokens=8" in reason


# ----------------------------------------------------------------------------------------------- converters
@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory) -> Path:
    from transformers import Qwen3ForCausalLM

    from megatron_rlvr.qwen3.hf import hf_config
    from megatron_rlvr.qwen3.shapes import get_preset

    root = tmp_path_factory.mktemp("hf") / "tiny"
    torch.manual_seed(0)
    Qwen3ForCausalLM(hf_config(get_preset("tiny"), torch.float32)).save_pretrained(str(root))
    return root


def test_from_hf_refuses_nan_weights_naming_the_tensor(hf_tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from megatron_rlvr.convert import ConversionError
    from megatron_rlvr.convert.from_hf import import_hf

    hf = tmp_path / "hf"
    shutil.copytree(hf_tiny, hf)
    tensors = load_file(str(hf / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"model.layers.1.mlp.down_proj.weight holds NaN or inf"):
        import_hf(hf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_from_hf_with_layer_types_disagreeing_with_the_layer_count_is_one_line(hf_tiny, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(hf_tiny, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["layer_types"] = cfg["layer_types"] + ["full_attention"]
    (hf / "config.json").write_text(json.dumps(cfg))
    res = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "convert", "from-hf", "--hf", str(hf), "--out",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "layer_types lists 3 layers but num_hidden_layers is 2" in res.stderr


def test_to_hf_refuses_an_unfinished_or_damaged_checkpoint(hf_tiny, tmp_path):
    from megatron_rlvr.checkpoint.store import write_integrity
    from megatron_rlvr.convert import ConversionError
    from megatron_rlvr.convert.from_hf import import_hf
    from megatron_rlvr.convert.to_hf import export_checkpoint

    it = tmp_path / "checkpoints" / "iter_0000003"
    import_hf(hf_tiny, it / "policy")
    half = tmp_path / "checkpoints" / "iter_0000004.tmp"
    shutil.copytree(it, half)
    with pytest.raises(ConversionError, match=r"iter_0000004.tmp is an unfinished checkpoint"):
        export_checkpoint(half, tmp_path / "out")
    write_integrity(it)
    shard = sorted((it / "policy").glob("*.distcp"))[0]
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(ConversionError, match=rf"{shard} has \d+ bytes"):
        export_checkpoint(tmp_path / "checkpoints" / "iter_0000003", tmp_path / "out")
    (tmp_path / "checkpoints" / "latest").write_bytes(b"\x00\xffnot a name")
    with pytest.raises(ConversionError, match=r"latest is damaged"):
        export_checkpoint(tmp_path / "checkpoints", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tmp_folders_of_a_killed_conversion_are_removed_by_the_next_one(hf_tiny, tmp_path):
    from megatron_rlvr.convert.from_hf import import_hf

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited: its pid names no live process (until reused)
    out = tmp_path / "imported"
    stale = tmp_path / f".imported.tmp-{socket.gethostname()}-{dead_pid}-abc123"
    live = tmp_path / f".imported.tmp-{socket.gethostname()}-{os.getpid()}-def456"  # a live writer's: kept
    other_host = tmp_path / f".imported.tmp-some-other-host-{dead_pid}-ghi789"  # cannot tell: kept
    for p in (stale, live, other_host):
        (p / "policy").mkdir(parents=True)
    import_hf(hf_tiny, out)
    assert (out / "model_info.json").is_file()
    assert not stale.exists() and live.exists() and other_host.exists()
