"""The root of the config tree: `RunConfig`, one field per section. The sections, each with its checks beside it,
live in `models`, `rollout`, `algorithm`, `data` and `outputs`; `validation` checks the tree as a whole."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import yaml

from megatron_rlvr.config.algorithm import AlgorithmConfig, DLCConfig
from megatron_rlvr.config.data import (ChecksConfig, EvalConfig, EvalSetConfig, MathTaskConfig, SyntheticTaskConfig,
                                       TaskConfig, WarmStartConfig, moved_task_keys)
from megatron_rlvr.config.fields import (DATASET_FORMATS, ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS,  # noqa: F401
                                         LOSS_AGG_MODES, LR_DECAY_STYLES, OFFPOLICY_CORRECTIONS, ConfigError, opt)
from megatron_rlvr.config.models import ModelConfig, OptimConfig, OptimizerConfig, ParallelConfig  # noqa: F401
from megatron_rlvr.config.outputs import CheckpointConfig, LoggingConfig
from megatron_rlvr.config.rollout import RolloutConfig

__all__ = ["AlgorithmConfig", "ChecksConfig", "CheckpointConfig", "ConfigError", "DATASET_FORMATS", "DLCConfig",
           "ESTIMATORS", "EvalConfig", "EvalSetConfig", "GROUP_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGG_MODES",
           "LR_DECAY_STYLES", "LoggingConfig", "MOVED_KEYS", "MathTaskConfig", "ModelConfig", "OFFPOLICY_CORRECTIONS",
           "OptimConfig", "OptimizerConfig", "ParallelConfig", "RolloutConfig", "RunConfig", "SyntheticTaskConfig",
           "TaskConfig", "WarmStartConfig", "opt"]

# Dotted keys of earlier layouts of the tree -> where they live now. Building a tree that still uses one (a YAML
# file, an override, an older run's config.yaml) is one ConfigError naming the new key (config.building); resuming
# compares a checkpoint's old keys under their new names (run.guard).
MOVED_KEYS: dict[str, str] = moved_task_keys()


@dataclass
class RunConfig:
    """A whole RLVR run."""

    run_dir: str = opt("runs/default", help="output folder of this run (config, "
                                            "metrics, plots, checkpoints, HF export)")
    steps: int = opt(30, help="RL steps")
    seed: int = opt(0, help="global seed")
    mode: str = opt("full", help="full | rollout_only (generate + score, no updates) | "
                                 "train_only (replay saved rollouts from replay_dir)")
    replay_dir: Optional[str] = opt(None, help="folder of saved rollouts for mode=train_only")
    policy: ModelConfig = opt(factory=ModelConfig, help="the policy model")
    memory: ModelConfig = opt(factory=lambda: ModelConfig(preset="tiny-mem"), help="the memory model of DLC")
    rollout: RolloutConfig = opt(factory=RolloutConfig, help="how responses are generated "
                                                             "(engine, sampling, batching)")
    algorithm: AlgorithmConfig = opt(factory=AlgorithmConfig, help="advantage estimation and the policy loss")
    dlc: DLCConfig = opt(factory=DLCConfig, help="distribution-level calibration: the memory model and lambda")
    optimizer: OptimizerConfig = opt(factory=OptimizerConfig, help="optimizers of the policy and the memory model")
    task: TaskConfig = opt(factory=TaskConfig, help="prompts and verifier (each task's settings in its own section)")
    warm_start: WarmStartConfig = opt(factory=WarmStartConfig, help="short supervised phase before RL")
    eval: EvalConfig = opt(factory=EvalConfig, help="periodic evaluation of the policy alone")
    checks: ChecksConfig = opt(factory=ChecksConfig, help="in-loop invariants that stop a bad run")
    checkpoint: CheckpointConfig = opt(factory=CheckpointConfig, help="checkpointing, resume and Hugging Face export")
    logging: LoggingConfig = opt(factory=LoggingConfig, help="metrics sinks")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
