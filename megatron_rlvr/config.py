"""The one typed config tree of a run: dataclasses, loadable from YAML, overridable by dotted `key=value`.

Every field carries a one-line docstring (the comment right above it), shown by `megatron-rlvr train --help`.
`load_config()` builds the tree and validates it once; every invalid value raises `ConfigError` naming the
field, the value and the fix. Megatron and SGLang options live in pass-through dicts (`megatron`, `sglang`)
handed to those libraries as they are, instead of a second copy of their arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from megatron_rlvr.models.presets import PRESETS, Qwen3Shape, get_preset


class ConfigError(ValueError):
    """An invalid config value. `str(err)` is one line: field, value, what is wrong and how to fix it."""

    def __init__(self, field_path: str, value: Any, problem: str, fix: str):
        self.field_path, self.value, self.problem, self.fix = field_path, value, problem, fix
        super().__init__(f"config error: {field_path}={value!r}: {problem}; fix: {fix}")


ESTIMATORS = ("grpo", "drgrpo", "rloo", "reinforce_pp_baseline", "raw", "mean")
GROUP_ESTIMATORS = ("grpo", "drgrpo", "rloo", "reinforce_pp_baseline", "mean")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
LR_DECAY_STYLES = ("constant", "cosine", "linear")


# ----------------------------------------------------------------------------------------------- models
@dataclass
class ParallelConfig:
    """Megatron parallel layout of one model. Data parallel size is world_size / (tp * pp)."""

    # tensor-parallel size; must divide the attention heads and the KV (query) groups
    tp: int = 1
    # pipeline-parallel size; must divide the number of layers
    pp: int = 1
    # virtual pipeline stages per rank (interleaved schedule); 1 = plain 1F1B
    vpp: int = 1
    # use Megatron's distributed (ZeRO-1) optimizer across data-parallel ranks
    distributed_optimizer: bool = False


@dataclass
class ModelConfig:
    """One Qwen3 model (policy or memory) trained under Megatron-Core."""

    # shape preset: qwen3-0.6b|1.7b|4b|8b|14b|32b or tiny|tiny-tied|tiny-mem|tiny-deep
    preset: str = "tiny"
    # parallel layout of this model
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # parameter/compute dtype: float32|bfloat16|float16 ("auto": bfloat16 on GPU, float32 on CPU)
    dtype: str = "auto"
    # initialise from this checkpoint folder (Megatron checkpoint from `convert from-hf`); None = random/warm start
    init_from: Optional[str] = None
    # layer implementation: auto (Transformer-Engine if importable, else local) | local | transformer_engine
    transformer_impl: str = "auto"
    # seed for weight initialisation
    init_seed: int = 1234
    # where initial weights are drawn: cpu (the same seed gives the same weights on CPU and GPU, so runs are
    # comparable across devices) | device (drawn on the GPU: faster for large models, but a different draw)
    init_device: str = "cpu"
    # extra megatron.core TransformerConfig fields passed through verbatim (e.g. {recompute_granularity: selective})
    megatron: dict = field(default_factory=dict)

    def shape(self) -> Qwen3Shape:
        return get_preset(self.preset)


@dataclass
class OptimConfig:
    """Optimizer of one model (Megatron's get_megatron_optimizer)."""

    # adam (AdamW with decoupled weight decay) or sgd
    optimizer: str = "adam"
    # peak learning rate (suits the tiny embedded run; recipes for Qwen3 sizes use 1e-6)
    lr: float = 2e-4
    # weight decay (decoupled)
    weight_decay: float = 0.0
    # Adam beta1 (first-moment decay)
    adam_beta1: float = 0.9
    # Adam beta2 (second-moment decay)
    adam_beta2: float = 0.999
    # Adam epsilon
    adam_eps: float = 1e-8
    # SGD momentum
    sgd_momentum: float = 0.0
    # gradient-norm clip; 0 disables
    clip_grad: float = 1.0
    # linear warm-up steps
    lr_warmup_steps: int = 0
    # learning-rate decay after the warm-up: constant | cosine | linear (down to min_lr_ratio * lr)
    lr_decay_style: str = "constant"
    # steps over which the lr decays (counted from step 0, warm-up included); 0 = no decay
    lr_decay_steps: int = 0
    # final lr of the decay, as a fraction of lr
    min_lr_ratio: float = 0.0


@dataclass
class OptimizerConfig:
    """Optimizers of both models."""

    # optimizer of the policy
    policy: OptimConfig = field(default_factory=OptimConfig)
    # optimizer of the memory model (trained with cross-entropy on each step's rollouts)
    memory: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))


# ----------------------------------------------------------------------------------------------- rollout
@dataclass
class RolloutConfig:
    """How responses are generated."""

    # rollout engine: embedded (in-process, HF Qwen3 modules with KV cache) or sglang
    engine: str = "embedded"
    # prompts per RL step (the global batch, in prompts)
    prompts_per_step: int = 8
    # responses per prompt (G)
    group_size: int = 8
    # maximum generated tokens per response
    max_new_tokens: int = 16
    # sampling temperature (> 0)
    temperature: float = 1.0
    # top-k truncation; 0 disables
    top_k: int = 0
    # nucleus truncation; 1.0 disables
    top_p: float = 1.0
    # sequences decoded together by the embedded engine
    batch_size: int = 256
    # GPUs (ranks) per colocated rollout engine: world_size / tp engines, each serving its shard of the step's prompts
    tp: int = 1
    # where SGLang engines run: colocated (share GPUs with training, memory released during updates) or dedicated
    placement: str = "colocated"
    # attach to running SGLang servers instead of starting engines (list of http URLs)
    server_urls: list = field(default_factory=list)
    # weight-push bucket size in MiB
    weight_bucket_mb: int = 512
    # compute dtype of the rollout engine: auto (the policy's dtype, so trainer and engine log-probs agree) |
    # float32 | bfloat16 | float16
    dtype: str = "auto"
    # restarts of a dead rollout engine per step (weights pushed again, the step's rollouts redrawn); then the run stops
    max_engine_restarts: int = 2
    # extra sglang.Engine / ServerArgs options passed through verbatim
    sglang: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- algorithm
@dataclass
class AlgorithmConfig:
    """Advantage estimation (SPEC 2.1-2.3) and the policy loss (SPEC 2.4)."""

    # advantage estimator: grpo|drgrpo|rloo|reinforce_pp_baseline|raw|mean
    estimator: str = "grpo"
    # IAC exponent alpha (SPEC 2.2); 0 = base estimator, paper default 1.0
    iac_alpha: float = 1.0
    # epsilon in the GRPO std normalisation
    std_eps: float = 1e-6
    # loss aggregation: token-mean|seq-mean-token-mean|seq-mean-token-sum-norm
    loss_agg: str = "token-mean"
    # PPO clip lower epsilon
    clip_eps_low: float = 0.2
    # PPO clip upper epsilon (DAPO clip-higher uses 0.28)
    clip_eps_high: float = 0.2
    # PPO dual-clip constant c > 1 (verl's clip_ratio_c, e.g. 3.0): bounds the loss of negative-advantage tokens
    # at -A * c; null = off
    clip_ratio_c: Optional[float] = None
    # DAPO dynamic sampling: drop groups whose rewards are all equal, oversample to refill
    dynamic_sampling: bool = False
    # DAPO dynamic sampling: at most this many extra generation rounds per step
    dynamic_sampling_max_rounds: int = 3
    # DAPO overlong reward shaping
    overlong_shaping: bool = False
    # DAPO overlong shaping: length of the soft-penalty window before max_new_tokens
    overlong_cache_len: int = 4
    # DAPO overlong shaping: penalty at the maximum length
    overlong_penalty: float = 1.0
    # KL-to-reference coefficient (0 disables; the reference is the initial policy)
    kl_coef: float = 0.0
    # KL estimator: k1|k2|k3
    kl_estimator: str = "k3"
    # entropy bonus coefficient
    entropy_coef: float = 0.0
    # PPO epochs over each step's rollouts
    ppo_epochs: int = 1
    # sequences per micro-batch in the policy/memory update (unless max_tokens_per_micro_batch is set)
    micro_batch_size: int = 16
    # pack each micro-batch's sequences into one THD sequence (no compute on padding) in the log-prob recompute and
    # the policy/memory updates; false = right-padded rows (float rounding differs slightly between the two)
    pack_sequences: bool = False
    # token budget per micro-batch (packed: real tokens; padded: rows x longest row), rows balanced by tokens
    # across data-parallel ranks; 0 = micro_batch_size sequences per micro-batch
    max_tokens_per_micro_batch: int = 0
    # optimizer steps per RL step (the global batch is split into this many mini-batches)
    mini_batches: int = 1
    # DLC off-policy correction: weight tokens by min(pi_old / pi_cal, tis_cap) (SPEC 2.5); the product of both
    # ratios below in one weight; use mismatch_correction / shift_correction instead to treat them apart
    tis: bool = False
    # truncation C of the importance weight
    tis_cap: float = 2.0
    # correction of the numerical mismatch pi_old / pi_policy(engine): none|token-tis|seq-tis|token-mis|seq-mis
    mismatch_correction: str = "none"
    # cap C of the mismatch correction (truncation point, or upper bound of masked IS)
    mismatch_cap: float = 2.0
    # masked IS of the mismatch also drops ratios below this (0 = no lower bound; only for *-mis)
    mismatch_mask_low: float = 0.0
    # correction of DLC's intended shift pi_policy(engine) / pi_cal: none|token-tis|seq-tis|token-mis|seq-mis
    shift_correction: str = "none"
    # cap C of the shift correction (truncation point, or upper bound of masked IS)
    shift_cap: float = 2.0
    # masked IS of the shift also drops ratios below this (0 = no lower bound; only for *-mis)
    shift_mask_low: float = 0.0

    def is_dapo(self) -> bool:
        return self.dynamic_sampling or self.overlong_shaping or self.clip_eps_high > self.clip_eps_low


@dataclass
class DLCConfig:
    """Distribution-level calibration (SPEC 2.5): sample from softmax((z_policy - lam * z_memory) / T)."""

    # train a memory model and calibrate rollouts with it
    enabled: bool = True
    # balance factor lambda >= 0 (0 = plain sampling, memory still trained). While the memory model matches the
    # policy, lambda acts like temperature 1 / (1 - lambda) on every token; the plausibility tau below limits that
    lam: float = 0.3
    # plausibility constraint tau in (0, 1]: only tokens with z >= max z + log(tau) may be sampled; null = off
    plausibility_tau: Optional[float] = None


# ----------------------------------------------------------------------------------------------- data
@dataclass
class TaskConfig:
    """Prompts and verifier."""

    # task: synthetic (built-in multi-answer task) | synthetic_coupled (its over-sharpening-study variant: per-query
    # answer sets, family habits, exceptions) | math (dataset files; math-verify or task.reward_fn)
    name: str = "synthetic"
    # dataset file(s) for `math`: .jsonl, .json or .parquet (comma-separated for several)
    path: Optional[str] = None
    # dataset layout preset: gsm8k | math | deepscaler | dapo | verl (sets prompt_key / answer_key); unset = keys
    format: Optional[str] = None
    # skip malformed dataset rows (counted and reported) instead of failing with file/line/field
    skip_malformed: bool = False
    # synthetic task: number of distinct queries
    num_queries: int = 64
    # synthetic task: correct answers (modes) per query
    answers_per_query: int = 4
    # seed of the synthetic task and of prompt order
    seed: int = 0
    # prompt field of `math` rows, dotted for nested fields (unset: the format's, else "prompt")
    prompt_key: Optional[str] = None
    # gold-answer field of `math` rows, e.g. reward_model.ground_truth (unset: the format's, else "answer")
    answer_key: Optional[str] = None
    # HF tokenizer folder for `math` (the synthetic task ships its own character tokenizer)
    tokenizer: Optional[str] = None
    # prompt rendering: auto (tokenizer's chat template if any) | tokenizer (required) | raw | path to a .jinja file
    chat_template: str = "auto"
    # system message put before every prompt (chat template) or its text (raw); unset = none
    system_prompt: Optional[str] = None
    # Qwen3's enable_thinking switch passed to the chat template; unset = the template's default
    enable_thinking: Optional[bool] = None
    # custom reward "module:function": fn(row: dict, response: str) -> float | (float, dict); unset = math-verify
    reward_fn: Optional[str] = None
    # verifier worker processes (each call has a timeout that works off the main thread); 0 = verify in-process
    verify_workers: int = 2
    # seconds one verifier call may take before it scores 0 and counts in verify/timeouts
    verify_timeout_s: float = 10.0


@dataclass
class WarmStartConfig:
    """Short supervised phase so RLVR starts from a policy with several modes (the paper's premise)."""

    # run the warm start when no checkpoint/init_from is given
    enabled: bool = True
    # supervised optimizer steps
    steps: int = 400
    # peak learning rate of the warm start (Adam). 3e-3 left about one initialisation in four stuck at ~2.7x the
    # converged loss; 1e-3 with warm-up and cosine decay converged for every seed measured (docs/ALGORITHMS.md)
    lr: float = 1e-3
    # linear lr warm-up steps (at most a tenth of the steps)
    warmup_steps: int = 40
    # lr decay after the warm-up: cosine | linear | constant
    lr_decay: str = "cosine"
    # final lr of the decay, as a fraction of lr
    min_lr_ratio: float = 0.1
    # quality gate: stop the run when a warm-started model's loss on held-out examples is above max_loss
    gate: bool = True
    # the gate's bound in nats per response token; null = the task's own (built-in task: 0.7, where converged
    # starts reach 0.47-0.64 and stuck ones 1.0-1.2; tasks without a bound are not gated)
    max_loss: Optional[float] = None
    # held-out examples the gate's loss is measured on (drawn apart from the training examples)
    eval_examples: int = 512
    # sequences per step
    batch_size: int = 64
    # share of incorrect answers in the supervised data
    incorrect_fraction: float = 0.3
    # cache folder (keyed by a hash of the relevant config) so reruns skip it
    cache_dir: str = "~/.cache/megatron_rlvr/warm_start"


@dataclass
class EvalConfig:
    """Periodic evaluation of the policy ALONE (lambda = 0): rollout metrics of a DLC run describe pi_cal, not the
    policy, so accuracy and mode coverage of the trained policy are measured here."""

    # evaluate every N steps (and at the end); 0 disables
    interval: int = 5
    # without eval.sets: evaluate the first N training prompts (fixed)
    num_prompts: int = 16
    # without eval.sets: responses per evaluation prompt (AVG@G / PASS@G)
    group_size: int = 8
    # sampling temperature of the evaluation
    temperature: float = 1.0
    # held-out sets: list of {name, path, samples (k, default 8), max_new_tokens, limit, format, prompt_key, answer_key}
    sets: list = field(default_factory=list)
    # also evaluate pi_cal (DLC sampling at dlc.lam), reported as eval_cal/...
    with_dlc: bool = False


@dataclass
class ChecksConfig:
    """In-loop invariants that stop a run with one clear error instead of training on garbage."""

    # step-0 gap between the trainer's recomputed log pi_old and the engine's log pi_policy (mean |diff| over
    # response tokens): error (stop the run) | warn | off
    logprob_gap: str = "error"
    # tolerance of that gap; null = by dtype (1e-3 when trainer and engine both compute in float32, 0.05 with
    # bfloat16/float16 on either side)
    logprob_gap_tolerance: Optional[float] = None


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class CheckpointConfig:
    """Megatron dist-checkpointing of models, optimizers, RNG and data position."""

    # save every N steps (0 = only at the end)
    save_interval: int = 10
    # resume: auto (latest in <run_dir>/checkpoints if any) | none | a checkpoint folder
    load: str = "auto"
    # keep this many latest checkpoints (0 keeps all)
    keep_last: int = 2
    # export both models to Hugging Face format at the end of the run
    export_hf: bool = True
    # fields that may differ from the checkpoint's config on resume (each change is recorded in the run folder)
    allow_config_change: list = field(default_factory=list)
    # integrity record checked on resume: sha256 (sizes and checksums of every file) | size (sizes only, faster)
    verify: str = "sha256"


@dataclass
class LoggingConfig:
    """Metrics sinks."""

    # rich progress bar with a live summary
    progress: bool = True
    # TensorBoard event files under <run_dir>/tb
    tensorboard: bool = True
    # log to Weights & Biases (needs `pip install wandb`)
    wandb: bool = False
    # W&B project
    wandb_project: str = "megatron-rlvr"
    # write PNG plots of the over-sharpening curves at the end
    plots: bool = True
    # save every step's rollouts (for train-only replay) under <run_dir>/rollouts
    save_rollouts: bool = False


@dataclass
class RunConfig:
    """A whole RLVR run."""

    # output folder of this run (config, metrics, plots, checkpoints, HF export)
    run_dir: str = "runs/default"
    # RL steps
    steps: int = 30
    # global seed
    seed: int = 0
    # full | rollout_only (generate + score, no updates) | train_only (replay saved rollouts from replay_dir)
    mode: str = "full"
    # folder of saved rollouts for mode=train_only
    replay_dir: Optional[str] = None
    # the policy model
    policy: ModelConfig = field(default_factory=ModelConfig)
    # the memory model of DLC
    memory: ModelConfig = field(default_factory=lambda: ModelConfig(preset="tiny-mem"))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    dlc: DLCConfig = field(default_factory=DLCConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------- building
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(path: str, value: Any, tp) -> Any:
    """Check/convert one leaf value against its annotated type, with a precise error."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return _coerce(path, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(path, value, "expected a boolean", "use true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, value, "expected an integer", "give a whole number")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "expected a number", "give a number such as 0.5 or 1e-6")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(path, value, "expected a string", "give a plain string")
        return str(value)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(path, value, "expected a list", "give a YAML list such as [a, b]")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "expected a mapping", "give a YAML mapping such as {key: value}")
        return value
    return value


def _build(cls, data: dict, prefix: str = ""):
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", data, "expected a mapping", "give a YAML mapping")
    types = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(names)}"
            raise ConfigError(path, value, "unknown config key", hint)
        tp = types[key]
        if _is_dataclass_type(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{path}.")
        else:
            kwargs[key] = _coerce(path, value, tp)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, value, f"{p} is not a section", "override a leaf of the config tree")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["dlc.lam=0.3", "policy.parallel.tp=2"]` -> nested dict. Values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, None, "an override must look like key=value", "write e.g. dlc.lam=0.3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if v is None and isinstance(out.get(k), dict):
            continue  # an empty YAML section (`memory:`) keeps that section's defaults
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> Any:
    """The YAML file's content; a syntax error names the file, line and column (not "<unicode string>")."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("config", where, f"YAML syntax error: {problem}",
                          "fix the file at that line (indentation, a missing ':' or an unclosed quote)") from None


def load_config(
    path: Optional[str | os.PathLike] = None,
    overrides: Optional[list[str]] = None,
    base: Optional[RunConfig] = None,
    validate: bool = True,
) -> RunConfig:
    """Build the run config: defaults (or `base`, e.g. a recipe) <- YAML file <- `key=value` overrides.

    The merge starts from the full tree of the defaults, never from an empty one: a section whose default comes
    from a `default_factory` (e.g. `memory`, preset tiny-mem) would otherwise be rebuilt from its class's defaults
    as soon as one of its fields is overridden, silently changing every other field of the section.
    """
    tree = dataclasses.asdict(base if base is not None else RunConfig())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", str(path), "config file not found", "pass an existing YAML file")
        loaded = _read_yaml(p)
        if not isinstance(loaded, dict):
            raise ConfigError("config", str(path), "the YAML file is not a mapping", "write key: value pairs")
        tree = _merge(tree, loaded)
    tree = _merge(tree, parse_overrides(overrides or []))
    cfg = _build(RunConfig, tree)
    if validate:
        validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------- validation
def _require(cond: bool, path: str, value: Any, problem: str, fix: str) -> None:
    if not cond:
        raise ConfigError(path, value, problem, fix)


def _validate_model(name: str, m: ModelConfig) -> Qwen3Shape:
    _require(m.preset.lower() in PRESETS, f"{name}.preset", m.preset, "unknown Qwen3 preset",
             f"choose one of {', '.join(PRESETS)}")
    shape = m.shape()
    par = m.parallel
    for k in ("tp", "pp", "vpp"):
        v = getattr(par, k)
        _require(v >= 1, f"{name}.parallel.{k}", v, "must be >= 1", "use a positive integer")
    _require(shape.num_key_value_heads % par.tp == 0, f"{name}.parallel.tp", par.tp,
             f"tensor-parallel size must divide the {shape.num_key_value_heads} query groups (KV heads) of "
             f"{m.preset}", f"use a tp that divides {shape.num_key_value_heads}")
    _require(shape.num_attention_heads % par.tp == 0, f"{name}.parallel.tp", par.tp,
             f"tensor-parallel size must divide the {shape.num_attention_heads} attention heads of {m.preset}",
             f"use a tp that divides {shape.num_attention_heads}")
    _require(shape.vocab_size % par.tp == 0, f"{name}.parallel.tp", par.tp,
             f"tensor-parallel size must divide the vocabulary ({shape.vocab_size}) of {m.preset}",
             "use a tp that divides the vocabulary size")
    layers_per = par.pp * par.vpp
    _require(shape.num_hidden_layers % layers_per == 0, f"{name}.parallel.pp", par.pp,
             f"pp * vpp = {layers_per} must divide the {shape.num_hidden_layers} layers of {m.preset}",
             "choose pp (and vpp) so that every stage holds a whole number of layers")
    _require(par.vpp == 1 or par.pp > 1, f"{name}.parallel.vpp", par.vpp,
             "virtual pipeline stages need pp > 1", "set vpp=1 or pp>=2")
    _require(m.dtype in ("auto", "float32", "bfloat16", "float16"), f"{name}.dtype", m.dtype,
             "unknown dtype", "use auto, float32, bfloat16 or float16")
    _require(m.transformer_impl in ("auto", "local", "transformer_engine"), f"{name}.transformer_impl",
             m.transformer_impl, "unknown layer implementation", "use auto, local or transformer_engine")
    _require(m.init_device in ("cpu", "device"), f"{name}.init_device", m.init_device, "unknown init device",
             "use cpu (same weights on every device) or device (faster on GPU)")
    if m.init_from is not None:
        _require(Path(m.init_from).expanduser().exists(), f"{name}.init_from", m.init_from,
                 "checkpoint folder does not exist",
                 "pass a folder written by the trainer or by `megatron-rlvr convert from-hf`")
    return shape


def _validate_optim(name: str, o: OptimConfig) -> None:
    _require(o.optimizer in ("adam", "sgd"), f"{name}.optimizer", o.optimizer, "unknown optimizer",
             "use adam or sgd")
    _require(o.lr > 0, f"{name}.lr", o.lr, "learning rate must be > 0", "use e.g. 1e-6")
    _require(o.weight_decay >= 0, f"{name}.weight_decay", o.weight_decay, "must be >= 0", "use 0 or more")
    for k in ("adam_beta1", "adam_beta2"):
        v = getattr(o, k)
        _require(0 <= v < 1, f"{name}.{k}", v, "must be in [0, 1)", "use e.g. 0.9 / 0.999")
    _require(0 <= o.sgd_momentum < 1, f"{name}.sgd_momentum", o.sgd_momentum, "must be in [0, 1)", "use 0..0.99")
    _require(o.clip_grad >= 0, f"{name}.clip_grad", o.clip_grad, "must be >= 0", "use 0 to disable")
    _require(o.lr_warmup_steps >= 0, f"{name}.lr_warmup_steps", o.lr_warmup_steps, "must be >= 0", "use 0 or more")
    _require(o.lr_decay_style in LR_DECAY_STYLES, f"{name}.lr_decay_style", o.lr_decay_style, "unknown decay style",
             f"use one of {', '.join(LR_DECAY_STYLES)}")
    _require(o.lr_decay_steps >= 0, f"{name}.lr_decay_steps", o.lr_decay_steps, "must be >= 0", "use 0 for no decay")
    if o.lr_decay_steps:
        _require(o.lr_decay_steps > o.lr_warmup_steps, f"{name}.lr_decay_steps", o.lr_decay_steps,
                 f"must exceed lr_warmup_steps={o.lr_warmup_steps} (the decay starts after the warm-up)",
                 "use more decay steps or fewer warm-up steps")
    _require(0 <= o.min_lr_ratio <= 1, f"{name}.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]", "use e.g. 0.1")


OFFPOLICY_CORRECTIONS = ("none", "token-tis", "seq-tis", "token-mis", "seq-mis")


def _validate_offpolicy(a: AlgorithmConfig, d: DLCConfig) -> None:
    """The separated off-policy corrections (mismatch and shift ratios) and their combinations."""
    for kind in ("mismatch", "shift"):
        corr, cap, low = (getattr(a, f"{kind}_{k}") for k in ("correction", "cap", "mask_low"))
        _require(corr in OFFPOLICY_CORRECTIONS, f"algorithm.{kind}_correction", corr, "unknown off-policy correction",
                 f"use one of {', '.join(OFFPOLICY_CORRECTIONS)}")
        _require(cap > 0 and cap != float("inf"), f"algorithm.{kind}_cap", cap, "the cap C must be a finite number > 0",
                 "use e.g. 2.0")
        _require(0 <= low < cap, f"algorithm.{kind}_mask_low", low, f"must be in [0, {kind}_cap={cap})",
                 "use 0 (no lower bound) or e.g. 0.5")
        _require(low == 0 or corr.endswith("-mis"), f"algorithm.{kind}_mask_low", low,
                 f"a lower bound only applies to masked IS, but {kind}_correction={corr}",
                 f"set algorithm.{kind}_correction=token-mis or seq-mis, or {kind}_mask_low=0")
        _require(not (a.tis and corr != "none"), f"algorithm.{kind}_correction", corr,
                 "algorithm.tis=true already weights by the product of both ratios; combining it with a separated "
                 "correction would correct twice", f"set algorithm.tis=false (or {kind}_correction=none)")
    _require(a.shift_correction == "none" or d.enabled, "algorithm.shift_correction", a.shift_correction,
             "the shift ratio pi_policy / pi_cal is identically 1 without DLC", "enable dlc or set it to none")


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
    """Check the whole tree once, before any process group or model exists."""
    _require_finite(cfg)
    _require(cfg.steps >= 0, "steps", cfg.steps, "must be >= 0", "use a non-negative number of RL steps")
    _require(cfg.mode in ("full", "rollout_only", "train_only"), "mode", cfg.mode, "unknown mode",
             "use full, rollout_only or train_only")
    if cfg.mode == "train_only":
        _require(cfg.replay_dir is not None and Path(cfg.replay_dir).is_dir(), "replay_dir", cfg.replay_dir,
                 "train_only replays saved rollouts and needs their folder",
                 "run once with logging.save_rollouts=true and pass its <run_dir>/rollouts")
    pshape = _validate_model("policy", cfg.policy)
    mshape = _validate_model("memory", cfg.memory)
    if cfg.dlc.enabled:
        _require(mshape.vocab_size == pshape.vocab_size, "memory.preset", cfg.memory.preset,
                 f"memory vocabulary ({mshape.vocab_size}) differs from the policy's ({pshape.vocab_size})",
                 "DLC subtracts logits token by token: pick a memory preset with the policy's vocabulary")
    _require(cfg.memory.parallel.tp <= cfg.policy.parallel.tp and cfg.memory.parallel.pp <= cfg.policy.parallel.pp,
             "memory.parallel", dataclasses.asdict(cfg.memory.parallel),
             "the memory model's layout must not be larger than the policy's",
             "use tp/pp for memory <= the policy's (it is the smaller model)")
    r = cfg.rollout
    _require(r.engine in ("embedded", "sglang"), "rollout.engine", r.engine, "unknown rollout engine",
             "use embedded or sglang")
    _require(r.prompts_per_step >= 1, "rollout.prompts_per_step", r.prompts_per_step, "must be >= 1", "use 1 or more")
    _require(r.group_size >= 1, "rollout.group_size", r.group_size, "must be >= 1", "use 1 or more")
    _require(r.max_new_tokens >= 1, "rollout.max_new_tokens", r.max_new_tokens, "must be >= 1", "use 1 or more")
    _require(r.temperature > 0, "rollout.temperature", r.temperature, "training rollouts need temperature > 0",
             "use e.g. 1.0")
    _require(r.top_k >= 0, "rollout.top_k", r.top_k, "must be >= 0", "use 0 to disable")
    _require(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]", "use 1.0 to disable")
    _require(r.batch_size >= 1, "rollout.batch_size", r.batch_size, "must be >= 1", "use 1 or more")
    _require(r.placement in ("colocated", "dedicated"), "rollout.placement", r.placement, "unknown placement",
             "use colocated or dedicated")
    _require(r.max_engine_restarts >= 0, "rollout.max_engine_restarts", r.max_engine_restarts, "must be >= 0",
             "use 0 to stop at the first engine failure")
    _require(r.tp >= 1, "rollout.tp", r.tp, "must be >= 1", "use 1 (one engine per GPU) or the GPUs per engine")
    _require(r.weight_bucket_mb >= 1, "rollout.weight_bucket_mb", r.weight_bucket_mb, "must be >= 1", "use e.g. 512")
    _require(r.dtype in ("auto", "float32", "bfloat16", "float16"), "rollout.dtype", r.dtype, "unknown dtype",
             "use auto (the policy's dtype), float32, bfloat16 or float16")
    k = cfg.checks
    _require(k.logprob_gap in ("error", "warn", "off"), "checks.logprob_gap", k.logprob_gap, "unknown mode",
             "use error, warn or off")
    if k.logprob_gap_tolerance is not None:
        _require(k.logprob_gap_tolerance > 0, "checks.logprob_gap_tolerance", k.logprob_gap_tolerance,
                 "must be > 0", "use e.g. 0.05, or null for the dtype-aware default")

    a = cfg.algorithm
    _require(a.estimator in ESTIMATORS, "algorithm.estimator", a.estimator, "unknown advantage estimator",
             f"use one of {', '.join(ESTIMATORS)}")
    if a.estimator in GROUP_ESTIMATORS:
        _require(r.group_size >= 2, "rollout.group_size", r.group_size,
                 f"the group estimator {a.estimator} needs at least 2 responses per prompt",
                 "set rollout.group_size>=2 or algorithm.estimator=raw")
    _require(a.iac_alpha >= 0, "algorithm.iac_alpha", a.iac_alpha, "IAC exponent alpha must be >= 0",
             "use 0 (off) to 2; the paper's default is 1.0")
    _require(a.std_eps > 0, "algorithm.std_eps", a.std_eps, "must be > 0", "use e.g. 1e-6")
    _require(a.loss_agg in LOSS_AGG_MODES, "algorithm.loss_agg", a.loss_agg, "unknown loss aggregation",
             f"use one of {', '.join(LOSS_AGG_MODES)}")
    for k in ("clip_eps_low", "clip_eps_high"):
        v = getattr(a, k)
        _require(0 < v < 1, f"algorithm.{k}", v, "PPO clip epsilon must be in (0, 1)", "use e.g. 0.2 (0.28 high)")
    if a.clip_ratio_c is not None:
        _require(a.clip_ratio_c > 1, "algorithm.clip_ratio_c", a.clip_ratio_c, "the dual-clip constant must be > 1",
                 "use e.g. 3.0 (verl's default), or null to disable")
    _require(a.dynamic_sampling_max_rounds >= 0, "algorithm.dynamic_sampling_max_rounds",
             a.dynamic_sampling_max_rounds, "must be >= 0", "use e.g. 3")
    if a.overlong_shaping:
        _require(0 < a.overlong_cache_len < r.max_new_tokens, "algorithm.overlong_cache_len", a.overlong_cache_len,
                 f"must be in (0, rollout.max_new_tokens={r.max_new_tokens})", "use a window shorter than max length")
    _require(a.overlong_penalty >= 0, "algorithm.overlong_penalty", a.overlong_penalty, "must be >= 0", "use e.g. 1.0")
    _require(a.kl_coef >= 0, "algorithm.kl_coef", a.kl_coef, "must be >= 0", "use 0 to disable")
    _require(a.kl_estimator in KL_ESTIMATORS, "algorithm.kl_estimator", a.kl_estimator, "unknown KL estimator",
             "use k1, k2 or k3")
    _require(a.entropy_coef >= 0, "algorithm.entropy_coef", a.entropy_coef, "must be >= 0", "use 0 to disable")
    _require(a.ppo_epochs >= 1, "algorithm.ppo_epochs", a.ppo_epochs, "must be >= 1", "use 1 or more")
    _require(a.micro_batch_size >= 1, "algorithm.micro_batch_size", a.micro_batch_size, "must be >= 1", "use 1+")
    _require(a.max_tokens_per_micro_batch >= 0, "algorithm.max_tokens_per_micro_batch", a.max_tokens_per_micro_batch,
             "must be >= 0", "use 0 (micro_batch_size sequences) or a token budget such as 16384")
    _require(a.mini_batches >= 1, "algorithm.mini_batches", a.mini_batches, "must be >= 1", "use 1 or more")
    n_seq = r.prompts_per_step * r.group_size
    _require(n_seq % a.mini_batches == 0, "algorithm.mini_batches", a.mini_batches,
             f"must divide the {n_seq} sequences of a step (prompts_per_step x group_size)",
             "pick a divisor of prompts_per_step * group_size")
    _require(a.tis_cap > 0, "algorithm.tis_cap", a.tis_cap, "truncation C must be > 0", "use e.g. 2.0")

    d = cfg.dlc
    _require(d.lam >= 0, "dlc.lam", d.lam, "lambda must be >= 0 (it scales the memory logits subtracted)",
             "use 0 (plain sampling) or a positive value such as 0.5")
    if d.plausibility_tau is not None:
        _require(0 < d.plausibility_tau <= 1, "dlc.plausibility_tau", d.plausibility_tau, "must be in (0, 1]",
                 "use e.g. 0.01, or null to disable")
    if a.tis:
        _require(d.enabled, "algorithm.tis", a.tis, "the TIS weight corrects for sampling from pi_cal",
                 "enable dlc or set algorithm.tis=false")
    _validate_offpolicy(a, d)

    _validate_optim("optimizer.policy", cfg.optimizer.policy)
    _validate_optim("optimizer.memory", cfg.optimizer.memory)
    for name in ("policy", "memory"):
        if getattr(cfg, name).parallel.distributed_optimizer:
            o = getattr(cfg.optimizer, name).optimizer
            _require(o == "adam", f"{name}.parallel.distributed_optimizer", True,
                     f"Megatron's distributed optimizer supports only adam, not {o}",
                     f"set optimizer.{name}.optimizer=adam or {name}.parallel.distributed_optimizer=false")

    t = cfg.task
    _require(t.name in ("synthetic", "synthetic_coupled", "math"), "task.name", t.name, "unknown task",
             "use synthetic, synthetic_coupled or math")
    if t.name == "math":
        _require(t.path is not None, "task.path", t.path, "the math task needs a dataset file",
                 "pass task.path=/path/to/train.jsonl (or .json / .parquet)")
        for p in str(t.path).split(","):
            _require(Path(p.strip()).expanduser().exists(), "task.path", t.path,
                     f"dataset file {p.strip()!r} does not exist", "check the path")
    _validate_task_fields(t)
    _require(t.num_queries >= 1, "task.num_queries", t.num_queries, "must be >= 1", "use 1 or more")
    _require(t.answers_per_query >= 1, "task.answers_per_query", t.answers_per_query, "must be >= 1", "use 1+")

    w = cfg.warm_start
    _require(w.steps >= 0, "warm_start.steps", w.steps, "must be >= 0", "use 0 or more")
    _require(w.lr > 0, "warm_start.lr", w.lr, "must be > 0", "use e.g. 3e-3")
    _require(w.batch_size >= 1, "warm_start.batch_size", w.batch_size, "must be >= 1", "use 1 or more")
    _require(0 <= w.incorrect_fraction < 1, "warm_start.incorrect_fraction", w.incorrect_fraction,
             "must be in [0, 1)", "use e.g. 0.3")
    _require(w.warmup_steps >= 0, "warm_start.warmup_steps", w.warmup_steps, "must be >= 0", "use e.g. 40")
    _require(w.lr_decay in LR_DECAY_STYLES, "warm_start.lr_decay", w.lr_decay, "unknown decay style",
             f"use one of {', '.join(LR_DECAY_STYLES)}")
    _require(0 <= w.min_lr_ratio <= 1, "warm_start.min_lr_ratio", w.min_lr_ratio, "must be in [0, 1]", "use e.g. 0.1")
    if w.max_loss is not None:
        _require(w.max_loss > 0, "warm_start.max_loss", w.max_loss, "must be > 0",
                 "use e.g. 0.6, or null for the task's bound")
    _require(w.eval_examples >= 1, "warm_start.eval_examples", w.eval_examples, "must be >= 1", "use e.g. 512")

    e = cfg.eval
    _require(e.interval >= 0, "eval.interval", e.interval, "must be >= 0", "use 0 to disable")
    _require(e.num_prompts >= 1, "eval.num_prompts", e.num_prompts, "must be >= 1", "use 1 or more")
    _require(e.group_size >= 1, "eval.group_size", e.group_size, "must be >= 1", "use 1 or more")
    _require(e.temperature > 0, "eval.temperature", e.temperature, "must be > 0", "use e.g. 1.0")
    eval_set_configs(cfg)

    c = cfg.checkpoint
    _require(c.save_interval >= 0, "checkpoint.save_interval", c.save_interval, "must be >= 0", "use 0 for end only")
    _require(c.keep_last >= 0, "checkpoint.keep_last", c.keep_last, "must be >= 0", "use 0 to keep all")
    _require(c.load in ("auto", "none") or Path(c.load).expanduser().exists(), "checkpoint.load", c.load,
             "checkpoint folder does not exist", "use auto, none, or an existing checkpoint folder")
    _require(c.verify in ("sha256", "size"), "checkpoint.verify", c.verify, "unknown integrity check",
             "use sha256 or size")
    keys = {k for k, _, _ in describe_tree()} if c.allow_config_change else set()
    for name in c.allow_config_change:
        _require(str(name) in keys, "checkpoint.allow_config_change", name, "not a config field",
                 "name fields by their dotted key, e.g. [rollout.group_size, seed]")


DATASET_FORMATS = ("gsm8k", "math", "deepscaler", "dapo", "verl")  # megatron_rlvr.tasks.layouts.FORMATS


def _validate_task_fields(t: TaskConfig) -> None:
    _require(t.format is None or t.format in DATASET_FORMATS, "task.format", t.format, "unknown dataset format",
             f"use one of {', '.join(DATASET_FORMATS)}, or leave it unset and give task.prompt_key / answer_key")
    _require(t.chat_template in ("auto", "tokenizer", "raw") or Path(t.chat_template).expanduser().is_file(),
             "task.chat_template", t.chat_template, "neither auto, tokenizer, raw nor an existing template file",
             "use one of those or the path of a Jinja chat-template file")
    _require(t.reward_fn is None or (":" in t.reward_fn and all(t.reward_fn.split(":", 1))), "task.reward_fn",
             t.reward_fn, "not of the form module:function", "write e.g. task.reward_fn=my_rewards:score")
    _require(t.verify_workers >= 0, "task.verify_workers", t.verify_workers, "must be >= 0",
             "use 0 (in-process) or a few worker processes")
    _require(t.verify_timeout_s > 0, "task.verify_timeout_s", t.verify_timeout_s, "must be > 0", "use e.g. 10")


@dataclass
class EvalSetConfig:
    """One held-out evaluation set (an entry of eval.sets)."""

    # name in metrics and the final table (e.g. math500)
    name: str
    # dataset file(s), in any layout training reads
    path: str
    # responses per prompt: AVG@k over them, PASS@k for k = 1, 2, 4, ... up to this
    samples: int = 8
    # response budget of this set (unset: rollout.max_new_tokens)
    max_new_tokens: Optional[int] = None
    # evaluate only the first N rows (unset: all)
    limit: Optional[int] = None
    # dataset layout preset (unset: task.format)
    format: Optional[str] = None
    # prompt field (unset: the set's format's, else task.prompt_key)
    prompt_key: Optional[str] = None
    # answer field (unset: the set's format's, else task.answer_key)
    answer_key: Optional[str] = None


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


def describe_tree(cls=RunConfig, prefix: str = "", inst=None) -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) rows for `--help`, read from the comment above each field."""
    import inspect

    rows = []
    src = inspect.getsource(cls).splitlines()
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in src:
        s = line.strip()
        if s.startswith("#"):
            pending.append(s.lstrip("# "))
        elif ":" in s and not s.startswith(("def ", "class ", "@", '"""', "return")) and pending is not None:
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                docs[name] = " ".join(pending)
            pending = []
        else:
            pending = []
    inst = cls() if inst is None else inst
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = types[f.name]
        if _is_dataclass_type(tp):
            rows.append((f"{prefix}{f.name}", "", (tp.__doc__ or "").strip().splitlines()[0]))
            rows.extend(describe_tree(tp, f"{prefix}{f.name}.", getattr(inst, f.name)))
        else:
            rows.append((f"{prefix}{f.name}", repr(getattr(inst, f.name)), docs.get(f.name, "")))
    return rows
