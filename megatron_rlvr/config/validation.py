"""Validation of the whole tree, once at start-up: every invalid value raises one `ConfigError` naming the
field, the value, the problem and the fix. Each section's own checks sit beside its dataclass (`validate_<section>`
in models / rollout / algorithm / data / outputs); here are the order they run in, the checks that span sections,
and the launch-time check of the world size."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from megatron_rlvr.config.algorithm import validate_algorithm, validate_dlc
from megatron_rlvr.config.building import _build, describe_tree
from megatron_rlvr.config.data import (DATASET_FORMATS, EvalSetConfig, validate_checks, validate_eval,
                                       validate_task, validate_warm_start)
from megatron_rlvr.config.fields import OFFPOLICY_CORRECTIONS, require as _require  # noqa: F401  (OFFPOLICY_CORRECTIONS: re-exported)
from megatron_rlvr.config.models import validate_model, validate_optim
from megatron_rlvr.config.outputs import validate_checkpoint
from megatron_rlvr.config.rollout import validate_rollout
from megatron_rlvr.config.tree import MOVED_KEYS, RunConfig


def _require_finite(node: Any, prefix: str = "") -> None:
    """Every float field of the tree is a finite number: inf / nan would pass the range checks below (inf > 0)
    and fail steps later as NaN weights or a sampling error."""
    for f in dataclasses.fields(node):
        value, path = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _require_finite(value, f"{path}.")
        elif isinstance(value, float) and not math.isfinite(value):
            _require(False, path, value, "must be a finite number (inf and nan are not)", "give a finite value")


def validate_config(cfg: RunConfig) -> None:
    """Check the whole tree once, before any process group or model exists: the run's own fields, then each
    section in turn (with the checks between sections where they belong)."""
    _require_finite(cfg)
    _require(cfg.steps >= 0, "steps", cfg.steps, "must be >= 0", "use a non-negative number of RL steps")
    _require(cfg.mode in ("full", "rollout_only", "train_only"), "mode", cfg.mode, "unknown mode",
             "use full, rollout_only or train_only")
    if cfg.mode == "train_only":
        _require(cfg.replay_dir is not None and Path(cfg.replay_dir).is_dir(), "replay_dir", cfg.replay_dir,
                 "train_only replays saved rollouts and needs their folder",
                 "run once with logging.save_rollouts=true and pass its <run_dir>/rollouts")
    pshape = validate_model("policy", cfg.policy)
    mshape = validate_model("memory", cfg.memory)
    if cfg.dlc.enabled:
        _require(mshape.vocab_size == pshape.vocab_size, "memory.preset", cfg.memory.preset,
                 f"memory vocabulary ({mshape.vocab_size}) differs from the policy's ({pshape.vocab_size})",
                 "DLC subtracts logits token by token: pick a memory preset with the policy's vocabulary")
    _require(cfg.memory.parallel.tp <= cfg.policy.parallel.tp and cfg.memory.parallel.pp <= cfg.policy.parallel.pp,
             "memory.parallel", dataclasses.asdict(cfg.memory.parallel),
             "the memory model's layout must not be larger than the policy's",
             "use tp/pp for memory <= the policy's (it is the smaller model)")
    validate_rollout(cfg.rollout)
    validate_checks(cfg.checks)
    validate_algorithm(cfg.algorithm, cfg.rollout)
    validate_dlc(cfg.dlc, cfg.algorithm)
    validate_optim("optimizer.policy", cfg.optimizer.policy)
    validate_optim("optimizer.memory", cfg.optimizer.memory)
    for name in ("policy", "memory"):
        if getattr(cfg, name).parallel.distributed_optimizer:
            o = getattr(cfg.optimizer, name).optimizer
            _require(o == "adam", f"{name}.parallel.distributed_optimizer", True,
                     f"Megatron's distributed optimizer supports only adam, not {o}",
                     f"set optimizer.{name}.optimizer=adam or {name}.parallel.distributed_optimizer=false")

    validate_task(cfg.task)
    validate_warm_start(cfg.warm_start)
    validate_eval(cfg.eval)
    eval_set_configs(cfg)

    c = cfg.checkpoint
    validate_checkpoint(c)
    keys = {k for k, _, _ in describe_tree()} if c.allow_config_change else set()
    for name in c.allow_config_change:
        _require(str(name) not in MOVED_KEYS, "checkpoint.allow_config_change", name,
                 f"{name} moved to {MOVED_KEYS.get(str(name))}", f"name it {MOVED_KEYS.get(str(name))}")
        _require(str(name) in keys, "checkpoint.allow_config_change", name, "not a config field",
                 "name fields by their dotted key, e.g. [rollout.group_size, seed]")


def eval_set_configs(cfg: RunConfig) -> list[EvalSetConfig]:
    """The entries of eval.sets as checked `EvalSetConfig`s (ConfigError naming eval.sets[i].field otherwise)."""
    e = cfg.eval
    _require(isinstance(e.sets, list), "eval.sets", e.sets, "expected a list of sets",
             "give e.g. eval.sets=[{name: math500, path: math500.jsonl, samples: 8}]")
    if e.sets:
        _require(cfg.task.name == "math", "eval.sets", f"{len(e.sets)} set(s)",
                 "held-out sets are dataset files, which the synthetic task does not read",
                 "use task.name=math, or leave eval.sets empty to evaluate the first eval.num_prompts prompts")
    out, names = [], set()
    for i, raw in enumerate(e.sets):
        where = f"eval.sets[{i}]"
        _require(isinstance(raw, dict), where, raw, "expected a mapping", "give {name: ..., path: ...}")
        for key in ("name", "path"):
            _require(key in raw, f"{where}.{key}", None, "missing", f"give the set's {key}")
        s = _build(EvalSetConfig, raw, f"{where}.")
        _require(s.name not in names and s.name.replace("_", "").replace("-", "").isalnum(), f"{where}.name",
                 s.name, "names must be unique and alphanumeric (they become metric names)", "rename the set")
        names.add(s.name)
        for p in s.path.split(","):
            _require(Path(p.strip()).expanduser().is_file(), f"{where}.path", s.path,
                     f"dataset file {p.strip()!r} does not exist", "check the path")
        _require(s.samples >= 1, f"{where}.samples", s.samples, "must be >= 1", "use e.g. 8 (AVG@8 / PASS@8)")
        _require(s.max_new_tokens is None or s.max_new_tokens >= 1, f"{where}.max_new_tokens", s.max_new_tokens,
                 "must be >= 1", "use a positive token budget or leave it unset")
        _require(s.limit is None or s.limit >= 1, f"{where}.limit", s.limit, "must be >= 1", "leave unset for all")
        _require(s.format is None or s.format in DATASET_FORMATS, f"{where}.format", s.format,
                 "unknown dataset format", f"use one of {', '.join(DATASET_FORMATS)}")
        out.append(s)
    return out


def check_world_size(cfg: RunConfig, world_size: int) -> None:
    """The parallel layouts against the actual number of ranks (checked at launch, before process groups)."""
    for name in ("policy", "memory"):
        par = getattr(cfg, name).parallel
        mp = par.tp * par.pp
        _require(world_size % mp == 0, f"{name}.parallel", f"tp={par.tp} pp={par.pp}",
                 f"tp * pp = {mp} does not divide the world size {world_size}",
                 f"launch a multiple of {mp} ranks (nodes x gpus_per_node) or change the layout")
    if not cfg.rollout.server_urls:
        _require(world_size % cfg.rollout.tp == 0, "rollout.tp", cfg.rollout.tp,
                 f"GPUs per rollout engine does not divide the world size {world_size}",
                 f"use a divisor of {world_size} (world_size / rollout.tp engines serve the step's prompts)")
