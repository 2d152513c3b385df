"""Launch stage: `megatron-rlvr launch`, one command from a config to a running job, built on nemo-run.

    megatron-rlvr launch --executor local --gpus-per-node 2 --recipe tiny_cpu steps=5
    megatron-rlvr launch --executor slurm --recipe qwen3_8b_iac_dlc --nodes 4 --gpus-per-node 8 \\
        --account ACCT --partition batch --container-image IMG --container-mounts /lustre:/lustre \\
        run_dir=/lustre/runs/q8b task.math.path=/lustre/data/deepscaler.jsonl --dryrun

The config is resolved and validated here (recipe <- YAML <- overrides), checked against the node/GPU layout,
written once to `<run_dir>/launch_config.yaml`, and every rank runs `python -m megatron_rlvr.cli train` on it.
See `megatron_rlvr.launch.nemo` for what each executor submits and `megatron_rlvr.launch.spec` for the checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional

from megatron_rlvr.config import ConfigError, RunConfig, load_config
from megatron_rlvr.launch.spec import (
    EXECUTORS,
    LaunchError,
    LaunchSpec,
    job_view,
    parse_key_values,
    parse_mounts,
    parse_sbatch_flags,
    validate_launch,
)

CONFIG_NAME = "launch_config.yaml"

__all__ = ["LaunchError", "LaunchSpec", "ResolvedLaunch", "main", "resolve", "validate_launch"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="megatron-rlvr launch", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Launch RLVR training with nemo-run: torchrun on this machine (local) or an sbatch job with one "
        "srun task per GPU (slurm). The config is resolved like `megatron-rlvr train` (recipe <- CONFIG <- "
        "key=value overrides) and checked against the nodes x GPUs before anything is submitted.",
        epilog="rollout placement: rollout.placement=colocated (default) shares the training GPUs; "
        "rollout.placement=dedicated with --rollout-nodes N submits one heterogeneous Slurm job whose group 0 runs "
        "an SGLang server on each of N extra nodes and whose group 1 trains (rollout.server_urls is filled in at "
        "run time); rollout.placement=dedicated with rollout.server_urls=[...] attaches to running servers.",
    )
    p.add_argument("config", nargs="?", help="YAML config file (optional)")
    p.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="where to run (default: local)")
    p.add_argument("--recipe", help="start from a recipe in megatron_rlvr.recipes (e.g. qwen3_8b_iac_dlc)")
    p.add_argument("--nodes", type=int, default=1, help="training nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="ranks per node (default: slurm 8; local: the visible CUDA GPUs, or 1 gloo rank on CPU)")
    p.add_argument("--account", help="Slurm account (required for slurm)")
    p.add_argument("--partition", help="Slurm partition (required for slurm)")
    p.add_argument("--time", default="04:00:00", help="Slurm time limit (default 04:00:00)")
    p.add_argument("--container-image", help="Pyxis container image with megatron-rlvr installed (slurm)")
    p.add_argument("--container-mounts", action="append", default=[],
                   help="SRC:DST[:FLAGS] mounts, comma-separated or repeated; must contain the run dir (slurm)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable of every rank (repeatable); overrides the NCCL/CUDA defaults")
    p.add_argument("--sbatch", action="append", default=[], metavar="K[=V]",
                   help="extra #SBATCH flag, e.g. --sbatch qos=high --sbatch exclusive (repeatable)")
    p.add_argument("--rollout-nodes", type=int, default=0,
                   help="dedicated SGLang rollout nodes (implies rollout.placement=dedicated; slurm)")
    p.add_argument("--rollout-port", type=int, default=30000, help="HTTP port of dedicated rollout servers")
    p.add_argument("--master-port", type=int, default=29500, help="torch.distributed rendezvous port (slurm)")
    p.add_argument("--job-name", default="megatron-rlvr", help="Slurm job name prefix / nemo-run experiment title")
    p.add_argument("--no-container", action="store_true",
                   help="Slurm without Pyxis: the job runs this Python on the nodes themselves (shared filesystem)")
    p.add_argument("--cpu-only", action="store_true",
                   help="Slurm: CPU nodes; --gpus-per-node ranks per node run on CPU (gloo), no GPUs are requested")
    p.add_argument("--preempt-signal-seconds", type=int, default=180,
                   help="Slurm: SIGUSR1 this many seconds before the time limit; the trainer finishes its step, "
                   "checkpoints and exits 75, and the job is requeued (default 180; 0 = no signal)")
    p.add_argument("--max-requeues", type=int, default=3,
                   help="Slurm: requeue a job that exited 75 (preempted or at its time limit) at most N times "
                   "(default 3); other failures are never requeued")
    p.add_argument("--dryrun", action="store_true",
                   help="print the sbatch script / torchrun command that would run, and exit")
    return p


def _default_gpus(executor: str) -> int:
    if executor == "slurm":
        return 8
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


@dataclasses.dataclass
class ResolvedLaunch:
    """A checked launch: the config as the job sees it, where it goes, and the executor spec."""

    cfg: RunConfig
    spec: LaunchSpec
    # where `launch` writes the resolved config (this machine)
    host_config: str
    # the same file as the job's ranks see it (through the container mounts on Slurm)
    job_config: str


def resolve(argv: list[str]) -> ResolvedLaunch:
    """Parse and check a launch command line. Nothing is written or submitted.

    Raises ConfigError / LaunchError (one line each) for anything that cannot work.
    """
    # intermixed: overrides may come before and after the flags
    args = _parser().parse_intermixed_args(argv)
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:  # only overrides were given
        overrides.insert(0, config_path)
        config_path = None
    if args.rollout_nodes > 0:
        overrides.insert(0, "rollout.placement=dedicated")  # a later explicit override still wins (and is checked)
    base = None
    if args.recipe:
        from megatron_rlvr.recipes import get_recipe

        base = get_recipe(args.recipe)
    cfg = load_config(config_path, overrides, base=base)
    spec = LaunchSpec(
        executor=args.executor, nodes=args.nodes,
        gpus_per_node=args.gpus_per_node if args.gpus_per_node is not None else _default_gpus(args.executor),
        account=args.account, partition=args.partition, time=args.time, container_image=args.container_image,
        container_mounts=parse_mounts(args.container_mounts), env=parse_key_values(args.env, "--env"),
        sbatch_args=parse_sbatch_flags(args.sbatch), rollout_nodes=args.rollout_nodes,
        rollout_port=args.rollout_port, master_port=args.master_port, job_name=args.job_name,
        no_container=args.no_container, cpu_only=args.cpu_only, preempt_signal_s=args.preempt_signal_seconds,
        max_requeues=args.max_requeues, dryrun=args.dryrun,
    )
    if spec.executor == "local" and args.gpus_per_node is not None:
        _check_local_gpus(spec.gpus_per_node)
    validate_launch(cfg, spec)
    job_cfg = job_view(cfg, spec)
    return ResolvedLaunch(
        cfg=job_cfg, spec=spec,
        host_config=os.path.join(os.path.abspath(os.path.expanduser(cfg.run_dir)), CONFIG_NAME),
        job_config=os.path.join(job_cfg.run_dir, CONFIG_NAME),
    )


def _check_local_gpus(gpus: int) -> None:
    """On a machine with GPUs, one rank per GPU: asking for more than are visible cannot start."""
    import torch

    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise LaunchError("--gpus-per-node", gpus, f"only {torch.cuda.device_count()} CUDA GPUs are visible",
                          f"use --gpus-per-node {torch.cuda.device_count()} or fewer")


def main(argv: Optional[list[str]] = None) -> int:
    """`megatron-rlvr launch ...`: 0 on success, 2 on bad input (one line on stderr), 1 if the job failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        launch = resolve(argv)
    except (ConfigError, LaunchError) as err:
        print(str(err), file=sys.stderr)
        return 2
    from megatron_rlvr.launch import nemo

    if launch.spec.dryrun:
        sys.stdout.write(nemo.dryrun_text(launch.spec, launch.job_config))
        return 0
    # Written once, before submission; every rank reads this file.
    os.makedirs(os.path.dirname(launch.host_config), exist_ok=True)
    with open(launch.host_config, "w") as f:
        f.write(launch.cfg.to_yaml())
    print(f"launch: wrote {launch.host_config}", file=sys.stderr)
    return nemo.submit(launch.spec, launch.job_config)
