"""The dedicated rollout server's entry point (`python -m megatron_rlvr.rollout.server`), without starting SGLang:
it writes the DLC model folder for the run's presets and spells out the SGLang server command.
(tests/sglang/test_rollout_server_e2e.py starts a real one.)"""

import json

import pytest
import yaml

from megatron_rlvr.rollout import server


def _config(tmp_path, **extra) -> str:
    cfg = {"run_dir": str(tmp_path / "run"), "rollout": {"engine": "sglang", "placement": "dedicated",
                                                         "sglang": {"max_running_requests": 8, "enable_metrics": True,
                                                                    "disable_radix_cache": False}}}
    cfg.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_dry_run_writes_the_dlc_model_folder_and_prints_the_sglang_command(tmp_path, capsys):
    rc = server.main([_config(tmp_path), "dlc.lam=0.4", "--port", "31234", "--host", "127.0.0.1", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    folder = next((tmp_path / "run" / "rollout_server").iterdir()) / "model"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["DLCQwen3ForCausalLM"] and "dlc_memory_config" in cfg
    assert not (folder / "model.safetensors").exists()  # random weights: the trainer pushes the real ones
    (cmd,) = [line for line in out.splitlines() if "sglang.launch_server" in line]
    assert f"--model-path {folder}" in cmd and "--port 31234" in cmd and "--host 127.0.0.1" in cmd
    assert "--load-format dummy" in cmd
    # rollout.sglang options become SGLang flags: values, bare flags for true, nothing for false
    assert "--max-running-requests 8" in cmd and " --enable-metrics" in cmd
    assert "--disable-radix-cache" not in cmd


def test_a_bad_config_is_one_line_naming_the_field(tmp_path, capsys):
    assert server.main([_config(tmp_path), "rollout.placement=elsewhere", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rollout.placement" in err and "elsewhere" in err


def test_without_dlc_the_server_serves_the_policy_alone(tmp_path, capsys):
    # no memory model is trained or pushed with DLC off: a memory stack would be decoded for nothing
    assert server.main([_config(tmp_path), "dlc.enabled=false", "--dry-run"]) == 0
    folder = next((tmp_path / "run" / "rollout_server").iterdir()) / "model"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["DLCQwen3ForCausalLM"] and cfg["dlc_policy_only"] is True
    assert "dlc_memory_config" not in cfg


@pytest.mark.parametrize("options,flags", [
    ({"tp_size": 8}, ["--tp-size", "8"]),
    ({"enable_metrics": True, "log_requests": False}, ["--enable-metrics"]),
    ({"cuda_graph_bs": [1, 2, 4]}, ["--cuda-graph-bs", "1", "2", "4"]),
])
def test_sglang_options_map_to_launch_server_flags(options, flags):
    assert server.sglang_flags(options) == flags
