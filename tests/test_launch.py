"""Launch stage: `megatron-rlvr launch` dry runs (sbatch script / torchrun command), pre-submit checks, a real run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_rlvr.launch import main as launch_main
from megatron_rlvr.launch.spec import LaunchSpec, container_path, job_view
from megatron_rlvr.recipes import get_recipe


@pytest.fixture
def nemo_home(tmp_path, monkeypatch):
    """nemo-run keeps experiments under NEMORUN_HOME; point it at a temporary folder for the test."""
    import nemo_run.config as nr_config

    # nemo-run's Slurm packaging runs shell commands through `invoke`, which forwards our stdin; pytest's
    # captured stdin refuses reads, a terminal or an empty stream does not.
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    home = tmp_path / "nemo_run_home"
    old = nr_config.get_nemorun_home()
    nr_config.set_nemorun_home(str(home))
    yield home
    nr_config.set_nemorun_home(old)


@pytest.fixture
def shared(tmp_path):
    """A stand-in for the cluster's shared filesystem, mounted at /shared in the container."""
    root = tmp_path / "lustre"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text('{"prompt": "1+1?", "answer": "2"}\n')
    return root


def _slurm_args(shared: Path, *extra: str) -> list[str]:
    return [
        "--executor", "slurm", "--account", "rl_team", "--partition", "batch", "--time", "12:00:00",
        "--container-image", "nvcr.io/acme/megatron-rlvr:0.1", "--container-mounts", f"{shared}:/shared",
        "--env", "NCCL_DEBUG=WARN", *extra,
        f"run_dir={shared}/runs/q8", f"task.math.path={shared}/data/train.jsonl",
    ]


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = launch_main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _srun_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("srun ") and "--container-image" in line]


# ----------------------------------------------------------------------------------------------- slurm dry run
def test_slurm_dryrun_of_paper_recipe_runs_one_srun_task_per_gpu_in_the_container(nemo_home, shared, capsys):
    rc, out, err = _run(_slurm_args(shared, "--recipe", "qwen3_8b_iac_dlc", "--nodes", "4", "--gpus-per-node",
                                     "8", "--sbatch", "qos=high", "--sbatch", "exclusive", "--dryrun"), capsys)
    assert rc == 0, err
    # node / GPU counts: 4 nodes x 8 tasks, one per GPU; extra flags as given
    for flag in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--account=rl_team",
                 "--partition=batch", "--time=12:00:00", "--qos=high", "--exclusive"):
        assert f"#SBATCH {flag}\n" in out
    assert "hetjob" not in out
    # one srun step, in the container, running the training task script; srun takes its task layout from sbatch
    (srun,) = _srun_lines(out)
    assert "--container-image nvcr.io/acme/megatron-rlvr:0.1" in srun
    assert f"--container-mounts {shared}:/shared," in srun
    assert "--ntasks" not in srun and "torchrun" not in srun
    assert srun.endswith("bash /nemo_run/scripts/train.sh")
    # environment: Megatron's and the NCCL defaults, the user's --env, and the rendezvous address
    for line in ("export CUDA_DEVICE_MAX_CONNECTIONS=1", "export NCCL_NVLS_ENABLE=0", "export NCCL_DEBUG=WARN",
                 "export MASTER_ADDR=$head_node_ip", "export MASTER_PORT=29500"):
        assert line in out.splitlines()
    assert out.index("export MASTER_ADDR") < out.index(srun)
    # the task script wires each task's Slurm ids to torch.distributed's names and trains on the resolved config
    for line in ("export RANK=$SLURM_PROCID", "export WORLD_SIZE=$SLURM_NTASKS", "export LOCAL_RANK=$SLURM_LOCALID",
                 "exec python -m megatron_rlvr.cli train /shared/runs/q8/launch_config.yaml"):
        assert line in out.splitlines()
    # a dry run writes nothing into the run dir and leaves no nemo-run experiment behind
    assert not (shared / "runs").exists()
    assert not list((nemo_home / "experiments").rglob("*.sh"))


def test_slurm_dryrun_with_rollout_nodes_submits_a_het_job_of_servers_and_trainers(nemo_home, shared, capsys):
    rc, out, err = _run(_slurm_args(shared, "--recipe", "qwen3_8b_iac_dlc", "--nodes", "4", "--gpus-per-node",
                                     "8", "--rollout-nodes", "2", "--rollout-port", "31000", "--dryrun"), capsys)
    assert rc == 0, err
    sbatch = out[: out.index("# task script")]
    group0, group1 = sbatch.split("#SBATCH hetjob\n")
    assert "#SBATCH --nodes=2\n" in group0 and "#SBATCH --ntasks-per-node=1\n" in group0  # one server per node
    assert "#SBATCH --nodes=4\n" in group1 and "#SBATCH --ntasks-per-node=8\n" in group1  # one trainer per GPU
    srun0, srun1 = _srun_lines(out)
    assert srun0.startswith("srun --het-group=0 ") and srun0.endswith(" & pids[0]=$!")
    assert srun1.startswith("srun --het-group=1 ")
    # rank 0 lives on the training group; the servers' URLs are collected from the rollout group
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_1" | head -n1)' in out
    assert "$SLURM_JOB_NODELIST_HET_GROUP_0" in out and '"http://&:31000"' in out
    assert "--port 31000" in out and "python -m megatron_rlvr.rollout.server /shared/runs/q8/launch_config" in out
    assert '"rollout.server_urls=[${MEGATRON_RLVR_ROLLOUT_URLS}]"' in out


def test_local_dryrun_prints_the_torchrun_command_with_one_rank_per_device(nemo_home, tmp_path, capsys):
    run_dir = tmp_path / "tiny"
    rc, out, err = _run(["--executor", "local", "--gpus-per-node", "2", "--recipe", "tiny_cpu",
                         f"run_dir={run_dir}", "--dryrun"], capsys)
    assert rc == 0, err
    (cmd,) = [line for line in out.splitlines() if line.startswith("env ") and " torchrun " in line]
    assert "--nnodes 1 --nproc-per-node 2" in cmd
    assert cmd.endswith(f"-m megatron_rlvr.cli train {run_dir}/launch_config.yaml")
    assert "CUDA_DEVICE_MAX_CONNECTIONS=1" in cmd and "NCCL_NVLS_ENABLE=0" in cmd
    assert not run_dir.exists()


# ----------------------------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    # (name, extra argv on top of a valid 8B Slurm launch, text the one-line error must contain)
    ("world size not a multiple of tp*pp", ["--nodes", "1", "--gpus-per-node", "3"],
     "policy.parallel='tp=2 pp=1': tp * pp = 2 does not divide the world size 3"),
    ("missing container image", ["--container-image", ""], "launch error: --container-image=''"),
    ("tensor parallel across nodes", ["--nodes", "2", "--gpus-per-node", "1"],
     "policy.parallel.tp=2: tensor parallelism larger than the 1 GPUs of a node"),
    ("batch does not split over data parallel", ["--nodes", "3", "--gpus-per-node", "6"],
     "do not split evenly over 9 data-parallel ranks"),
    ("dedicated placement without nodes or urls", ["rollout.placement=dedicated"],
     "launch error: --rollout-nodes=0: rollout.placement=dedicated needs nodes for the SGLang servers"),
    ("rollout nodes with embedded engine", ["--rollout-nodes", "1", "rollout.engine=embedded"],
     "launch error: rollout.engine='embedded'"),
    ("bad env item", ["--env", "NCCL_DEBUG"], "launch error: --env='NCCL_DEBUG': expected NAME=VALUE"),
    ("bad time", ["--time", "4h"], "launch error: --time='4h': not a Slurm time limit"),
    ("relative mount", ["--container-mounts", "data:/data"], "launch error: --container-mounts='data:/data'"),
    ("run dir outside the mounts", ["run_dir=/elsewhere/run"],
     "launch error: run_dir='/elsewhere/run': this path is not under any --container-mounts source"),
    ("dataset outside the mounts", ["task.math.path=/etc/hostname"],
     "launch error: task.math.path='/etc/hostname': this path is not under any --container-mounts source"),
    ("bad config value", ["rollout.group_size=1"], "config error: rollout.group_size=1"),
    ("unknown recipe", ["--recipe", "qwen3_9b"], "config error: --recipe='qwen3_9b': unknown recipe"),
]


@pytest.mark.parametrize("extra, expected", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_slurm_input_is_one_clear_error_before_submission(extra, expected, nemo_home, shared, capsys):
    base = _slurm_args(shared, "--recipe", "qwen3_8b_iac_dlc", "--nodes", "4", "--gpus-per-node", "8")
    rc, out, err = _run(base + extra, capsys)
    assert rc == 2
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert expected in err and "; fix: " in err
    assert not (shared / "runs").exists() and not nemo_home.exists()


@pytest.mark.parametrize("drop, flag", [("--account", "--account"), ("--partition", "--partition")])
def test_missing_slurm_account_or_partition_is_named(drop, flag, nemo_home, shared, capsys):
    argv = _slurm_args(shared, "--recipe", "qwen3_4b_iac_dlc", "--nodes", "1")
    i = argv.index(drop)
    del argv[i:i + 2]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and err.startswith(f"launch error: {flag}=None") and len(err.strip().splitlines()) == 1


def test_local_executor_rejects_several_nodes(nemo_home, tmp_path, capsys):
    rc, _, err = _run(["--executor", "local", "--nodes", "2", "--gpus-per-node", "1", f"run_dir={tmp_path}/r"],
                      capsys)
    assert rc == 2 and "launch error: --nodes=2: the local executor runs on this machine only" in err


def test_container_path_maps_through_the_longest_matching_mount():
    mounts = ["/lustre:/data", "/lustre/fsw/team:/team", "/home/u:/home/u:ro"]
    assert container_path("/lustre/fsw/team/runs/a", mounts) == "/team/runs/a"
    assert container_path("/lustre/other", mounts) == "/data/other"
    assert container_path("/lustre", mounts) == "/data"
    assert container_path("/home/u/x", mounts) == "/home/u/x"
    assert container_path("/lustrefs/x", mounts) is None  # a path prefix is not a parent folder


def test_job_view_makes_paths_absolute_locally_and_maps_them_through_mounts_on_slurm(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = get_recipe("tiny_cpu")
    cfg.run_dir, cfg.task.math.tokenizer = "runs/a", str(tmp_path / "tok")
    local = job_view(cfg, LaunchSpec(executor="local"))
    assert local.run_dir == str(tmp_path / "runs" / "a") and local.task.math.tokenizer == str(tmp_path / "tok")
    assert local.checkpoint.load == "auto" and local.policy.init_from is None  # keywords and unset paths stay
    slurm = job_view(cfg, LaunchSpec(executor="slurm", container_mounts=[f"{tmp_path}:/work"]))
    assert (slurm.run_dir, slurm.task.math.tokenizer) == ("/work/runs/a", "/work/tok")
    assert cfg.run_dir == "runs/a"  # the input config is not modified


# ----------------------------------------------------------------------------------------------- slurm submission
FAKE_SBATCH = """#!/bin/bash
# Stand-in for Slurm's sbatch (no cluster here): keep the submitted script, answer like `sbatch --parsable`.
cp "${@: -1}" "$FAKE_SBATCH_DIR/submitted.sh"
echo 4242
"""


def test_slurm_submission_writes_the_config_once_and_sbatches_the_dryrun_script(tmp_path, shared):
    """Through nemo-run's real submission path; only the sbatch binary is a stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_DIR": str(tmp_path),
           "NEMORUN_HOME": str(tmp_path / "nemo_run_home")}
    argv = [sys.executable, "-m", "megatron_rlvr.cli", "launch", *_slurm_args(shared, "--recipe",
            "qwen3_4b_iac_dlc", "--nodes", "2", "--gpus-per-node", "8")]
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted train: slurm_tunnel://nemo_run/4242" in proc.stdout
    script = (tmp_path / "submitted.sh").read_text()
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --ntasks-per-node=8\n" in script
    assert len(_srun_lines(script)) == 1
    # the config the ranks read: written once, with the run dir as the container sees it
    written = (shared / "runs" / "q8" / "launch_config.yaml").read_text()
    assert "run_dir: /shared/runs/q8\n" in written and "path: /shared/data/train.jsonl\n" in written
    assert "preset: qwen3-4b" in written


# ----------------------------------------------------------------------------------------------- real local run
def test_local_executor_runs_tiny_cpu_job_and_writes_metrics(tmp_path):
    """The tiny CPU job, launched through nemo-run's LocalExecutor + torchrun with 2 gloo ranks, trains 2 steps."""
    pytest.importorskip("megatron_rlvr.train", reason="the trainer (megatron_rlvr.train) has not landed yet")
    run_dir = tmp_path / "tiny"
    env = {**os.environ, "NEMORUN_HOME": str(tmp_path / "nemo_run_home"), "CUDA_VISIBLE_DEVICES": ""}
    overrides = [
        f"run_dir={run_dir}", "steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=4", "warm_start.steps=2", "warm_start.batch_size=4", "warm_start.gate=false",
        f"warm_start.cache_dir={tmp_path}/ws",
        "checkpoint.save_interval=0", "checkpoint.export_hf=false", "checkpoint.load=none",
        "logging.progress=false", "logging.tensorboard=false", "logging.plots=false", "eval.interval=0",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_rlvr.cli", "launch", "--executor", "local", "--gpus-per-node", "2",
         "--recipe", "tiny_cpu", *overrides],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (run_dir / "launch_config.yaml").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().strip().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 1]
    assert all("reward/mean" in r for r in records)
