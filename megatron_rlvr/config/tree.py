"""The config tree of a run: one dataclass per component, every field with a one-line doc comment above it (the
`megatron-rlvr train --help` text) and a default that suits the embedded CPU run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from megatron_rlvr import registry
from megatron_rlvr.qwen3.shapes import Qwen3Shape, get_preset


class ConfigError(ValueError):
    """An invalid config value. `str(err)` is one line: field, value, what is wrong and how to fix it."""

    def __init__(self, field_path: str, value: Any, problem: str, fix: str):
        self.field_path, self.value, self.problem, self.fix = field_path, value, problem, fix
        super().__init__(f"config error: {field_path}={value!r}: {problem}; fix: {fix}")


# the pluggable names come from the stages' registries (megatron_rlvr.registry), never from copies here
ESTIMATORS = registry.ESTIMATORS.names()
GROUP_ESTIMATORS = registry.ESTIMATORS.with_trait("group")
LOSS_AGG_MODES = registry.LOSS_AGGREGATIONS.names()
KL_ESTIMATORS = registry.KL_ESTIMATORS.names()
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
    """Advantage estimation and the policy loss (docs/ALGORITHMS.md: "Advantage estimators", "IAC", "DAPO",
    "Policy loss")."""

    # advantage estimator: grpo|drgrpo|rloo|reinforce_pp_baseline|raw|mean
    estimator: str = "grpo"
    # IAC exponent alpha (docs/ALGORITHMS.md, "IAC"); 0 = base estimator, paper default 1.0
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
    # DLC off-policy correction: weight tokens by min(pi_old / pi_cal, tis_cap) (docs/ALGORITHMS.md, "DLC"); the
    # product of both ratios below in one weight; use mismatch_correction / shift_correction instead to treat them apart
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
    """Distribution-level calibration: sample from softmax((z_policy - lam * z_memory) / T) (docs/ALGORITHMS.md)."""

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
