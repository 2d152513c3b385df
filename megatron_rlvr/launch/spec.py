"""Launch stage, part 1: what to launch (`LaunchSpec`) and the checks made before anything is submitted.

Pure Python: no nemo-run or torch import, so every bad input fails in milliseconds with one line naming the flag
or config field and the fix (`LaunchError`, same format as `ConfigError`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Optional

from megatron_rlvr.config import RunConfig, check_world_size

EXECUTORS = ("local", "slurm")

# Environment of every training rank. Values set with --env win.
DEFAULT_ENV: dict[str, str] = {
    # Megatron orders tensor-parallel communication behind compute kernels on one hardware queue; with more queues
    # the overlap it schedules can run out of order (Megatron-LM's training scripts set the same value).
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    # NVLink multicast (NVLS / symmetric-memory multicast) off: a job that uses it can take shared GPUs out of
    # service (see the device notes); NCCL's other algorithms are used instead.
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    # Let the NCCL process group free tensors when their stream finishes instead of recording streams.
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
}

_SLURM_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LaunchError(ValueError):
    """A launch input that cannot work. `str(err)` is one line: the flag/field, its value, the problem, the fix."""

    def __init__(self, flag: str, value: Any, problem: str, fix: str):
        self.flag, self.value, self.problem, self.fix = flag, value, problem, fix
        super().__init__(f"launch error: {flag}={value!r}: {problem}; fix: {fix}")


@dataclass
class LaunchSpec:
    """Where and how to run one training job (the command-line flags of `megatron-rlvr launch`)."""

    # local (torchrun on this machine) or slurm (sbatch + srun, one task per GPU, in a Pyxis container)
    executor: str = "local"
    # training nodes (dedicated rollout nodes come on top, see rollout_nodes)
    nodes: int = 1
    # ranks per node: GPUs per node; on a CPU-only machine the number of gloo ranks
    gpus_per_node: int = 1
    # Slurm account, partition and wall time (HH:MM:SS or D-HH:MM:SS)
    account: Optional[str] = None
    partition: Optional[str] = None
    time: str = "04:00:00"
    # container image for Pyxis (srun --container-image); megatron-rlvr must be installed in it
    container_image: Optional[str] = None
    # SRC:DST[:FLAGS] bind mounts; the run dir must lie under one of them so the job can read its config
    container_mounts: list[str] = field(default_factory=list)
    # extra environment of every rank, on top of DEFAULT_ENV
    env: dict[str, str] = field(default_factory=dict)
    # extra #SBATCH flags (e.g. qos, reservation, constraint); True = a flag without value
    sbatch_args: dict[str, Any] = field(default_factory=dict)
    # nodes that run only SGLang rollout servers (rollout.placement=dedicated); 0 = none
    rollout_nodes: int = 0
    # HTTP port of each dedicated rollout server
    rollout_port: int = 30000
    # rendezvous port of torch.distributed on the first training node (Slurm)
    master_port: int = 29500
    # Slurm job name prefix and nemo-run experiment title
    job_name: str = "megatron-rlvr"
    # Slurm without Pyxis: run on the nodes' own environment (this Python, same paths: a shared filesystem)
    no_container: bool = False
    # Slurm: CPU nodes (ranks are gloo processes, no GPUs requested)
    cpu_only: bool = False
    # Slurm: send SIGUSR1 this many seconds before the time limit (the trainer checkpoints and exits 75); 0 = never
    preempt_signal_s: int = 180
    # Slurm: requeue a job stopped by preemption or the time limit (exit 75) at most this many times
    max_requeues: int = 3
    # print what would be submitted and exit
    dryrun: bool = False

    @property
    def world_size(self) -> int:
        """Training ranks: nodes x ranks per node."""
        return self.nodes * self.gpus_per_node


def _require(cond: bool, flag: str, value: Any, problem: str, fix: str) -> None:
    if not cond:
        raise LaunchError(flag, value, problem, fix)


def parse_key_values(items: list[str], flag: str) -> dict[str, str]:
    """["A=1", "B=x=y"] -> {"A": "1", "B": "x=y"}; anything else is a LaunchError naming `flag`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        _require(bool(sep) and bool(_ENV_NAME.match(key.replace("-", "_"))), flag, item,
                 "expected NAME=VALUE", f"write e.g. {flag} NCCL_DEBUG=INFO")
        out[key] = value
    return out


def parse_sbatch_flags(items: list[str]) -> dict[str, Any]:
    """["qos=high", "exclusive"] -> {"qos": "high", "exclusive": True}; a bare name is a value-less #SBATCH flag."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" in item:
            out.update(parse_key_values([item], "--sbatch"))
        else:
            _require(bool(_ENV_NAME.match(item.replace("-", "_"))), "--sbatch", item, "expected NAME or NAME=VALUE",
                     "write e.g. --sbatch qos=high or --sbatch exclusive")
            out[item] = True
    return out


def parse_mounts(items: list[str]) -> list[str]:
    """Split comma-separated --container-mounts values and check each is SRC:DST[:FLAGS] with absolute paths."""
    mounts = [m for item in items for m in item.split(",") if m]
    for m in mounts:
        parts = m.split(":")
        _require(len(parts) in (2, 3) and all(p.startswith("/") for p in parts[:2]), "--container-mounts", m,
                 "a mount must be SRC:DST[:FLAGS] with absolute paths", "write e.g. /lustre:/lustre")
    return mounts


def container_path(host_path: str, mounts: list[str]) -> Optional[str]:
    """Where the job sees `host_path`: DST + rest for the longest mount SRC containing it, or None if unmounted."""
    best: Optional[tuple[int, str]] = None
    host = PurePosixPath(os.path.normpath(host_path))
    for m in mounts:
        src, dst = m.split(":")[:2]
        src_p = PurePosixPath(os.path.normpath(src))
        if host == src_p or src_p in host.parents:
            rest = host.relative_to(src_p)
            candidate = str(PurePosixPath(dst) / rest) if str(rest) != "." else dst
            if best is None or len(src_p.parts) > best[0]:
                best = (len(src_p.parts), candidate)
    return best[1] if best else None


def _check_layout(cfg: RunConfig, spec: LaunchSpec) -> None:
    """Nodes x GPUs against both models' parallel layouts (torchtitan-style: before any process group exists)."""
    world = spec.world_size
    check_world_size(cfg, world)  # tp * pp of each model divides the world size
    seqs = cfg.rollout.prompts_per_step * cfg.rollout.group_size // cfg.algorithm.mini_batches
    for name in ("policy", "memory"):
        par = getattr(cfg, name).parallel
        if spec.executor == "slurm" or spec.nodes > 1:
            # Tensor parallelism all-reduces every layer; across nodes that traffic leaves NVLink.
            _require(par.tp <= spec.gpus_per_node, f"{name}.parallel.tp", par.tp,
                     f"tensor parallelism larger than the {spec.gpus_per_node} GPUs of a node",
                     f"use {name}.parallel.tp<={spec.gpus_per_node} (pipeline parallelism spans nodes)")
        dp = world // (par.tp * par.pp)
        _require(seqs % dp == 0, f"{name}.parallel", f"tp={par.tp} pp={par.pp}",
                 f"the {seqs} sequences of each optimizer step do not split evenly over {dp} data-parallel ranks "
                 f"({spec.nodes} nodes x {spec.gpus_per_node} GPUs)",
                 "pick nodes/GPUs so that prompts_per_step*group_size/mini_batches is a multiple of "
                 "world_size/(tp*pp)")


def _check_rollout_placement(cfg: RunConfig, spec: LaunchSpec) -> None:
    r = cfg.rollout
    _require(spec.rollout_nodes >= 0, "--rollout-nodes", spec.rollout_nodes, "must be >= 0", "use 0 or more")
    if r.placement == "colocated":
        _require(spec.rollout_nodes == 0, "--rollout-nodes", spec.rollout_nodes,
                 "dedicated rollout nodes were asked for but rollout.placement=colocated",
                 "drop --rollout-nodes, or set rollout.placement=dedicated")
        return
    _require(r.engine == "sglang", "rollout.engine", r.engine,
             "rollout.placement=dedicated runs SGLang servers on their own nodes; the embedded engine lives "
             "inside the trainer", "set rollout.engine=sglang, or rollout.placement=colocated")
    if r.server_urls:
        _require(spec.rollout_nodes == 0, "--rollout-nodes", spec.rollout_nodes,
                 "rollout.server_urls already names running servers, so no rollout nodes are started",
                 "drop --rollout-nodes, or clear rollout.server_urls to start servers with the job")
        return
    _require(spec.executor == "slurm", "rollout.placement", r.placement,
             "the local executor runs one node and cannot start dedicated rollout nodes",
             "use --executor slurm --rollout-nodes N, pass rollout.server_urls=[http://host:port], "
             "or set rollout.placement=colocated")
    _require(spec.rollout_nodes >= 1, "--rollout-nodes", spec.rollout_nodes,
             "rollout.placement=dedicated needs nodes for the SGLang servers",
             "pass --rollout-nodes N (N >= 1), or rollout.server_urls=[http://host:port]")


def validate_launch(cfg: RunConfig, spec: LaunchSpec) -> None:
    """Every check that can fail before submission; raises LaunchError (or ConfigError from check_world_size)."""
    _require(spec.executor in EXECUTORS, "--executor", spec.executor, "unknown executor", "use local or slurm")
    _require(spec.nodes >= 1, "--nodes", spec.nodes, "must be >= 1", "use 1 or more")
    _require(spec.gpus_per_node >= 1, "--gpus-per-node", spec.gpus_per_node, "must be >= 1", "use 1 or more")
    _require(1 <= spec.master_port < 65536, "--master-port", spec.master_port, "not a TCP port", "use e.g. 29500")
    _require(1 <= spec.rollout_port < 65536, "--rollout-port", spec.rollout_port, "not a TCP port",
             "use e.g. 30000")
    if spec.executor == "local":
        _require(spec.nodes == 1, "--nodes", spec.nodes, "the local executor runs on this machine only",
                 "use --nodes 1, or --executor slurm for several nodes")
    else:
        _require(bool(spec.account), "--account", spec.account, "Slurm jobs are charged to an account",
                 "pass --account YOUR_SLURM_ACCOUNT")
        _require(bool(spec.partition), "--partition", spec.partition, "no Slurm partition given",
                 "pass --partition NAME (see `sinfo -s`)")
        _require(bool(_SLURM_TIME.match(spec.time)), "--time", spec.time, "not a Slurm time limit",
                 "use HH:MM:SS or D-HH:MM:SS, e.g. 04:00:00")
        _require(0 <= spec.preempt_signal_s <= 65535, "--preempt-signal-seconds", spec.preempt_signal_s,
                 "must be in [0, 65535] (Slurm's --signal limit)", "use e.g. 180 (time to finish a step and save)")
        _require(spec.max_requeues >= 0, "--max-requeues", spec.max_requeues, "must be >= 0", "use e.g. 3")
        if spec.no_container:
            _require(not spec.container_image and not spec.container_mounts, "--no-container", True,
                     "--container-image / --container-mounts were given too", "drop one or the other")
        else:
            _require(bool(spec.container_image), "--container-image", spec.container_image,
                     "Slurm jobs run in a Pyxis container and none was given",
                     "pass --container-image IMAGE (with megatron-rlvr installed), e.g. a .sqsh file or registry "
                     "tag, or --no-container on a cluster without Pyxis")
            _require(bool(spec.container_mounts), "--container-mounts", spec.container_mounts,
                     "the job must read its config from and write its run dir to shared storage",
                     "pass --container-mounts /lustre:/lustre (a shared filesystem holding the run dir)")
    job_view(cfg, spec)  # every path of the config must be reachable from the job
    _check_layout(cfg, spec)
    _check_rollout_placement(cfg, spec)


# Config fields holding paths the job reads or writes (dotted, as in overrides).
PATH_FIELDS = ("run_dir", "replay_dir", "policy.init_from", "memory.init_from", "task.math.path",
               "task.math.tokenizer", "checkpoint.load")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _with(cfg: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    return dataclasses.replace(cfg, **{head: _with(getattr(cfg, head), rest, value) if rest else value})


def job_view(cfg: RunConfig, spec: LaunchSpec) -> RunConfig:
    """The config as the job's ranks see it: every path absolute (they start in another working directory) and,
    on Slurm, mapped through the container mounts. A path outside every mount is a LaunchError naming its field."""
    for name in PATH_FIELDS:
        value = _get(cfg, name)
        if value is None or (name == "checkpoint.load" and value in ("auto", "none")):
            continue
        host = os.path.abspath(os.path.expanduser(value))
        if spec.executor == "slurm" and not spec.no_container:
            mapped = container_path(host, spec.container_mounts)
            _require(mapped is not None, name, host,
                     "this path is not under any --container-mounts source, so the job could not reach it",
                     f"use a path on the shared filesystem or add a mount that contains it (e.g. {name}=/shared/...)")
            host = mapped
        cfg = _with(cfg, name, host)
    return cfg
