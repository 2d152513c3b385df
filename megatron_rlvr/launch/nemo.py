"""Launch stage, part 2: the nemo-run tasks and executors of a training job, their dry run and their submission.

The training entry point is one nemo-run task, `python -m megatron_rlvr.cli train <run_dir>/launch_config.yaml`:

- local: `run.LocalExecutor(launcher="torchrun")`; torchrun starts one process per GPU (per gloo rank on CPU) and
  sets MASTER_ADDR/MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK itself.
- slurm: `run.SlurmExecutor` with one srun task per GPU in a Pyxis container. The sbatch script exports
  MASTER_ADDR (first training node) and MASTER_PORT; a small worker script maps each task's SLURM_PROCID,
  SLURM_NTASKS and SLURM_LOCALID to RANK, WORLD_SIZE and LOCAL_RANK, the names torch.distributed's env://
  rendezvous (and so Megatron) reads.
- slurm with `rollout.placement=dedicated` and `--rollout-nodes N`: one heterogeneous Slurm job. Het group 0 is N
  rollout nodes running one SGLang server each (`python -m megatron_rlvr.rollout.server`, all GPUs of the node);
  het group 1 is the training nodes. The sbatch script collects the rollout nodes' hostnames into
  `rollout.server_urls`, which the training task passes as an override. When the trainer exits, nemo-run's job
  monitor stops the servers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import sys
from pathlib import Path

import nemo_run as run
from nemo_run.config import get_nemorun_home

from megatron_rlvr.errors import PREEMPTED_EXIT_CODE
from megatron_rlvr.launch.spec import DEFAULT_ENV, LaunchSpec

# Entry point of a dedicated rollout server: `python -m <module> CONFIG --host H --port P`.
ROLLOUT_SERVER_MODULE = "megatron_rlvr.rollout.server"
ROLLOUT_URLS_VAR = "MEGATRON_RLVR_ROLLOUT_URLS"


# ----------------------------------------------------------------------------------------------- scripts
def train_worker_script(config_path: str, dedicated_rollout: bool, python: str = "python") -> str:
    """Body of the Slurm training task; srun runs one copy per GPU. `python`: the container's, or (without a
    container) this interpreter's absolute path."""
    override = f' "rollout.server_urls=[${{{ROLLOUT_URLS_VAR}}}]"' if dedicated_rollout else ""
    return (
        "# megatron-rlvr training task: srun starts one copy per GPU.\n"
        "# Megatron initialises torch.distributed from env://; map this task's Slurm ids to the torch names.\n"
        "# MASTER_ADDR and MASTER_PORT come from the sbatch script.\n"
        "export RANK=$SLURM_PROCID\n"
        "export WORLD_SIZE=$SLURM_NTASKS\n"
        "export LOCAL_RANK=$SLURM_LOCALID\n"
        f"exec {shlex.quote(python)} -m megatron_rlvr.cli train {shlex.quote(config_path)}{override}\n"
    )


def rollout_server_script(config_path: str, port: int) -> str:
    """Body of a dedicated rollout task; srun runs one copy per rollout node."""
    return (
        "# megatron-rlvr rollout server: one per dedicated rollout node, SGLang on all of the node's GPUs,\n"
        "# serving the policy and memory model (DLC); the trainer reaches it at http://<node>:<port>.\n"
        f"exec python -m {ROLLOUT_SERVER_MODULE} {shlex.quote(config_path)} --host 0.0.0.0 --port {port}\n"
    )


def requeue_filter_lines() -> list[str]:
    """nemo-run's sbatch script requeues any failed job (`scontrol requeue`, up to the executor's retries). Only a
    trainer that stopped for preemption or the time limit (exit PREEMPTED_EXIT_CODE, after writing a checkpoint)
    should come back: this shell function lets `scontrol requeue` through for that exit code only."""
    code = PREEMPTED_EXIT_CODE
    return [
        f"# requeue only a trainer that checkpointed and exited {code} (SIGUSR1 before the time limit, or SIGTERM);",
        "# any other failure ends the job (nemo-run's epilogue would requeue every failure)",
        'scontrol() { if [ "$1" = requeue ] && [ "${exitcode:-0}" != ' + str(code) + ' ]; then '
        'echo "exit code ${exitcode:-?}: a failure, not a preemption; not requeued"; return 0; fi; '
        'command scontrol "$@"; }',
    ]


def no_container_lines() -> list[str]:
    """nemo-run always writes Pyxis flags into its srun line (`--container-mounts <job dir>:/nemo_run`, a workdir,
    `bash /nemo_run/scripts/...`). Without Pyxis this shell function drops them and points /nemo_run/ back at the
    job folder on the shared filesystem, so the same step runs on the node itself."""
    return [
        "# --no-container: run the srun steps on the nodes themselves (nemo-run writes Pyxis flags)",
        r'srun() { local a=() d=""; while [ $# -gt 0 ]; do case "$1" in '
        r'--container-image|--container-workdir) shift 2 ;; '
        r'--container-mounts) d=$(tr , "\n" <<<"$2" | sed -n "s|:/nemo_run$||p"); shift 2 ;; '
        r'*) a+=("${1/#\/nemo_run\//$d/}"); shift ;; esac; done; command srun "${a[@]}"; }',
    ]


def sbatch_setup_lines(spec: LaunchSpec, dedicated_rollout: bool) -> str:
    """Lines the sbatch script runs before srun: the requeue filter, the container-less srun (if asked), the
    rendezvous address and, if dedicated, the server URLs."""
    lines = requeue_filter_lines() + (no_container_lines() if spec.no_container else [])
    lines.append("# torch.distributed rendezvous: rank 0 runs on the first training node")
    if dedicated_rollout:
        # Het group 1 holds the training nodes; nemo-run's $head_node_ip is the first node of the whole job.
        lines.append('export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_1" | head -n1)')
    else:
        lines.append("export MASTER_ADDR=$head_node_ip")
    lines.append(f"export MASTER_PORT={spec.master_port}")
    if dedicated_rollout:
        lines += [
            "# dedicated SGLang servers, one per node of het group 0, as a YAML list for rollout.server_urls",
            f'export {ROLLOUT_URLS_VAR}=$(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_0" '
            f"| sed 's|.*|\"http://&:{spec.rollout_port}\"|' | paste -sd, -)",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- executors
def _env(spec: LaunchSpec) -> dict[str, str]:
    return {**DEFAULT_ENV, **spec.env}


def _slurm_executor(spec: LaunchSpec, nodes: int, tasks_per_node: int, heterogeneous: bool,
                    setup_lines: str) -> run.SlurmExecutor:
    return run.SlurmExecutor(
        account=spec.account,
        partition=spec.partition,
        time=spec.time,
        nodes=nodes,
        ntasks_per_node=tasks_per_node,
        gpus_per_node=None if spec.cpu_only else spec.gpus_per_node,
        container_image=None if spec.no_container else spec.container_image,
        container_mounts=list(spec.container_mounts),
        env_vars=_env(spec),
        additional_parameters={**({"requeue": True} if spec.max_requeues else {}), **spec.sbatch_args} or None,
        # SIGUSR1 to every task ahead of the time limit: the trainer checkpoints and exits 75 (then requeued)
        signal=f"USR1@{spec.preempt_signal_s}" if spec.preempt_signal_s else None,
        retries=spec.max_requeues,
        # After a stop signal every rank checkpoints and exits 75; nemo-run's --kill-on-bad-exit=1 would kill the
        # ranks that exit a moment later and turn the step's exit code into a failure (no requeue). The later
        # flag wins; --wait=60 still ends the other ranks a minute after the first one exits (e.g. a crash).
        srun_args=["--kill-on-bad-exit=0"],
        job_name_prefix=f"{spec.job_name}-",
        heterogeneous=heterogeneous,
        setup_lines=setup_lines,
        # megatron-rlvr comes from the container image; nothing is packaged from the submitting machine.
        packager=run.Packager(),
        tunnel=run.LocalTunnel(job_dir=os.path.join(get_nemorun_home(), "experiments")),
    )


def _local_executor(spec: LaunchSpec) -> run.LocalExecutor:
    env = _env(spec)
    # nemo-run runs the bare name `torchrun`: put this interpreter's scripts first so it is the venv's torchrun.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return run.LocalExecutor(ntasks_per_node=spec.gpus_per_node, launcher="torchrun", env_vars=env)


def _add_jobs(exp: run.Experiment, spec: LaunchSpec, config_path: str) -> None:
    """Add the job(s) of this launch to `exp` (inside its context manager)."""
    if spec.executor == "local":
        task = run.Script(path="megatron_rlvr.cli", m=True, entrypoint="python", args=["train", config_path])
        exp.add(task, executor=_local_executor(spec), name="train", tail_logs=True)
        return
    dedicated = spec.rollout_nodes > 0
    setup = sbatch_setup_lines(spec, dedicated)
    python = sys.executable if spec.no_container else "python"
    train_task = run.Script(inline=train_worker_script(config_path, dedicated, python))
    train_exec = _slurm_executor(spec, spec.nodes, spec.gpus_per_node, dedicated, setup)
    if not dedicated:
        exp.add(train_task, executor=train_exec, name="train")
        return
    # Servers first (het group 0) so they load weights while the trainer imports Megatron and builds its models.
    rollout_task = run.Script(inline=rollout_server_script(config_path, spec.rollout_port))
    rollout_exec = _slurm_executor(spec, spec.rollout_nodes, 1, True, setup)
    exp.add([rollout_task, train_task], executor=[rollout_exec, train_exec], name="rlvr")


def _experiment(spec: LaunchSpec) -> run.Experiment:
    os.makedirs(get_nemorun_home(), exist_ok=True)  # nemo-run's local scheduler writes its job table there
    executor = run.LocalExecutor() if spec.executor == "local" else None
    return run.Experiment(spec.job_name, executor=executor, log_level="WARN")


# ----------------------------------------------------------------------------------------------- dry run / submit
def dryrun_text(spec: LaunchSpec, config_path: str) -> str:
    """What would be submitted: the sbatch script and its task scripts (slurm) or the torchrun command (local)."""
    # nemo-run reports progress on stdout; keep stdout for the script itself.
    with contextlib.redirect_stdout(sys.stderr):
        with _experiment(spec) as exp:
            _add_jobs(exp, spec, config_path)
            exp.dryrun(log=False, delete_exp_dir=False)
        exp_dir = exp._exp_dir
    try:
        parts = [f"# resolved config (written at submission): {config_path}"]
        if spec.executor == "local":
            for job in exp.jobs:
                for role in job._executable.roles:
                    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(role.env.items()) if k != "PATH")
                    parts.append(f"# torchrun command ({spec.gpus_per_node} ranks on this machine)")
                    parts.append(f"env {env} {role.entrypoint} {' '.join(role.args)}")
        else:
            for path in sorted(glob.glob(os.path.join(exp_dir, "*_sbatch.sh"))):
                parts.append(f"# sbatch script ({os.path.basename(path)})\n{Path(path).read_text()}")
            for path in sorted(glob.glob(os.path.join(exp_dir, "*", "scripts", "*.sh"))):
                parts.append(f"# task script, run by srun as /nemo_run/scripts/{os.path.basename(path)}\n"
                             f"{Path(path).read_text()}")
        return "\n".join(parts) + "\n"
    finally:
        shutil.rmtree(exp_dir, ignore_errors=True)


def submit(spec: LaunchSpec, config_path: str) -> int:
    """Run (local: wait for the trainer, return 0 on success) or submit (slurm: print the job handle, return 0)."""
    from torchx.specs import AppState

    with _experiment(spec) as exp:
        _add_jobs(exp, spec, config_path)
        exp.run(detach=spec.executor == "slurm", tail_logs=spec.executor == "local")
    if spec.executor == "slurm":
        for job in exp.jobs:
            handle = getattr(job, "handle", "")
            print(f"submitted {job.id}: {handle}  (logs: nemo experiment logs {exp._id} 0)")
        return 0
    states = [job.state for job in exp.jobs]
    ok = all(s == AppState.SUCCEEDED for s in states)
    if not ok:
        print(f"launch: training job ended with state {', '.join(str(s) for s in states)}; "
              f"logs under {exp._exp_dir}", file=sys.stderr)
    return 0 if ok else 1
