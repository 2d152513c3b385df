"""The config tree of a run: one dataclass per component, every field declared with `opt(default, help=...)` (the
help is the `megatron-rlvr train --help` text, kept in the field's metadata) and a default that suits the embedded
CPU run."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Optional

import yaml

from megatron_rlvr import registry
from megatron_rlvr.qwen3.shapes import Qwen3Shape, get_preset


class ConfigError(ValueError):
    """An invalid config value. `str(err)` is one line: field, value, what is wrong and how to fix it."""

    def __init__(self, field_path: str, value: Any, problem: str, fix: str):
        self.field_path, self.value, self.problem, self.fix = field_path, value, problem, fix
        super().__init__(f"config error: {field_path}={value!r}: {problem}; fix: {fix}")


def opt(default: Any = MISSING, *, help: str, factory: Optional[Callable[[], Any]] = None) -> Any:
    """A config field with its one-line `--help` text in `metadata["help"]`.

    `factory` (a class or a lambda) builds mutable defaults and sections afresh for each instance, exactly as
    `field(default_factory=...)`; no default and no factory makes the field required (as in EvalSetConfig).
    """
    if not help.strip():
        raise ValueError("opt(): every config field needs a non-empty help text")
    if factory is not None:
        if default is not MISSING:
            raise ValueError("opt(): give either a default or a factory, not both")
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


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

    tp: int = opt(1, help="tensor-parallel size; must divide the attention heads and the KV (query) groups")
    pp: int = opt(1, help="pipeline-parallel size; must divide the number of layers")
    vpp: int = opt(1, help="virtual pipeline stages per rank (interleaved schedule); 1 = plain 1F1B")
    distributed_optimizer: bool = opt(False, help="use Megatron's distributed (ZeRO-1) "
                                                  "optimizer across data-parallel ranks")


@dataclass
class ModelConfig:
    """One Qwen3 model (policy or memory) trained under Megatron-Core."""

    preset: str = opt("tiny", help="shape preset: qwen3-0.6b|1.7b|4b|8b|14b|32b or tiny|tiny-tied|tiny-mem|tiny-deep")
    parallel: ParallelConfig = opt(factory=ParallelConfig, help="parallel layout of this model")
    dtype: str = opt("auto", help="parameter/compute dtype: float32|bfloat16|float16 "
                                  '("auto": bfloat16 on GPU, float32 on CPU)')
    init_from: Optional[str] = opt(None, help="initialise from this checkpoint folder (Megatron checkpoint "
                                              "from `convert from-hf`); None = random/warm start")
    transformer_impl: str = opt("auto", help="layer implementation: auto (Transformer-Engine if "
                                             "importable, else local) | local | transformer_engine")
    init_seed: int = opt(1234, help="seed for weight initialisation")
    init_device: str = opt("cpu", help="where initial weights are drawn: cpu (the same seed gives the same "
                                       "weights on CPU and GPU, so runs are comparable across devices) | device "
                                       "(drawn on the GPU: faster for large models, but a different draw)")
    megatron: dict = opt(factory=dict, help="extra megatron.core TransformerConfig fields passed "
                                            "through verbatim (e.g. {recompute_granularity: selective})")

    def shape(self) -> Qwen3Shape:
        return get_preset(self.preset)


@dataclass
class OptimConfig:
    """Optimizer of one model (Megatron's get_megatron_optimizer)."""

    optimizer: str = opt("adam", help="adam (AdamW with decoupled weight decay) or sgd")
    lr: float = opt(2e-4, help="peak learning rate (suits the tiny embedded run; recipes for Qwen3 sizes use 1e-6)")
    weight_decay: float = opt(0.0, help="weight decay (decoupled)")
    adam_beta1: float = opt(0.9, help="Adam beta1 (first-moment decay)")
    adam_beta2: float = opt(0.999, help="Adam beta2 (second-moment decay)")
    adam_eps: float = opt(1e-8, help="Adam epsilon")
    sgd_momentum: float = opt(0.0, help="SGD momentum")
    clip_grad: float = opt(1.0, help="gradient-norm clip; 0 disables")
    lr_warmup_steps: int = opt(0, help="linear warm-up steps")
    lr_decay_style: str = opt("constant", help="learning-rate decay after the warm-up: constant "
                                               "| cosine | linear (down to min_lr_ratio * lr)")
    lr_decay_steps: int = opt(0, help="steps over which the lr decays (counted from "
                                      "step 0, warm-up included); 0 = no decay")
    min_lr_ratio: float = opt(0.0, help="final lr of the decay, as a fraction of lr")


@dataclass
class OptimizerConfig:
    """Optimizers of both models."""

    policy: OptimConfig = opt(factory=OptimConfig, help="optimizer of the policy")
    memory: OptimConfig = opt(factory=lambda: OptimConfig(lr=1e-3), help="optimizer of the memory model (trained with "
                                                                         "cross-entropy on each step's rollouts)")


# ----------------------------------------------------------------------------------------------- rollout
@dataclass
class RolloutConfig:
    """How responses are generated."""

    engine: str = opt("embedded", help="rollout engine: embedded (in-process, HF "
                                       "Qwen3 modules with KV cache) or sglang")
    prompts_per_step: int = opt(8, help="prompts per RL step (the global batch, in prompts)")
    group_size: int = opt(8, help="responses per prompt (G)")
    max_new_tokens: int = opt(16, help="maximum generated tokens per response")
    temperature: float = opt(1.0, help="sampling temperature (> 0)")
    top_k: int = opt(0, help="top-k truncation; 0 disables")
    top_p: float = opt(1.0, help="nucleus truncation; 1.0 disables")
    batch_size: int = opt(256, help="sequences decoded together by the embedded engine")
    tp: int = opt(1, help="GPUs (ranks) per colocated rollout engine: world_size / "
                          "tp engines, each serving its shard of the step's prompts")
    placement: str = opt("colocated", help="where SGLang engines run: colocated (share GPUs with "
                                           "training, memory released during updates) or dedicated")
    server_urls: list = opt(factory=list, help="attach to running SGLang servers instead "
                                               "of starting engines (list of http URLs)")
    weight_bucket_mb: int = opt(512, help="weight-push bucket size in MiB")
    dtype: str = opt("auto", help="compute dtype of the rollout engine: auto (the policy's dtype, so "
                                  "trainer and engine log-probs agree) | float32 | bfloat16 | float16")
    max_engine_restarts: int = opt(2, help="restarts of a dead rollout engine per step (weights pushed "
                                           "again, the step's rollouts redrawn); then the run stops")
    sglang: dict = opt(factory=dict, help="extra sglang.Engine / ServerArgs options passed through verbatim")


# ----------------------------------------------------------------------------------------------- algorithm
@dataclass
class AlgorithmConfig:
    """Advantage estimation and the policy loss (docs/ALGORITHMS.md: "Advantage estimators", "IAC", "DAPO",
    "Policy loss")."""

    estimator: str = opt("grpo", help="advantage estimator: grpo|drgrpo|rloo|reinforce_pp_baseline|raw|mean")
    iac_alpha: float = opt(1.0, help="IAC exponent alpha (docs/ALGORITHMS.md, "
                                     '"IAC"); 0 = base estimator, paper default 1.0')
    std_eps: float = opt(1e-6, help="epsilon in the GRPO std normalisation")
    loss_agg: str = opt("token-mean", help="loss aggregation: token-mean|seq-mean-token-mean|seq-mean-token-sum-norm")
    clip_eps_low: float = opt(0.2, help="PPO clip lower epsilon")
    clip_eps_high: float = opt(0.2, help="PPO clip upper epsilon (DAPO clip-higher uses 0.28)")
    clip_ratio_c: Optional[float] = opt(None, help="PPO dual-clip constant c > 1 (verl's "
                                                   "clip_ratio_c, e.g. 3.0): bounds the loss of "
                                                   "negative-advantage tokens at -A * c; null = off")
    dynamic_sampling: bool = opt(False, help="DAPO dynamic sampling: drop groups whose "
                                             "rewards are all equal, oversample to refill")
    dynamic_sampling_max_rounds: int = opt(3, help="DAPO dynamic sampling: at most this "
                                                   "many extra generation rounds per step")
    overlong_shaping: bool = opt(False, help="DAPO overlong reward shaping")
    overlong_cache_len: int = opt(4, help="DAPO overlong shaping: length of the "
                                          "soft-penalty window before max_new_tokens")
    overlong_penalty: float = opt(1.0, help="DAPO overlong shaping: penalty at the maximum length")
    kl_coef: float = opt(0.0, help="KL-to-reference coefficient (0 disables; the reference is the initial policy)")
    kl_estimator: str = opt("k3", help="KL estimator: k1|k2|k3")
    entropy_coef: float = opt(0.0, help="entropy bonus coefficient")
    ppo_epochs: int = opt(1, help="PPO epochs over each step's rollouts")
    micro_batch_size: int = opt(16, help="sequences per micro-batch in the policy/memory "
                                         "update (unless max_tokens_per_micro_batch is set)")
    pack_sequences: bool = opt(False, help="pack each micro-batch's sequences into one THD sequence (no compute on "
                                           "padding) in the log-prob recompute and the policy/memory updates; false "
                                           "= right-padded rows (float rounding differs slightly between the two)")
    max_tokens_per_micro_batch: int = opt(0, help="token budget per micro-batch (packed: real tokens; padded: rows "
                                                  "x longest row), rows balanced by tokens across data-parallel "
                                                  "ranks; 0 = micro_batch_size sequences per micro-batch")
    memory_max_tokens_per_micro_batch: int = opt(0, help="token budget per micro-batch of the memory update alone "
                                                         "(0 = the policy update's micro-batching); the memory "
                                                         "model is smaller, so larger micro-batches fit and spend "
                                                         "less time per kernel launch")
    mini_batches: int = opt(1, help="optimizer steps per RL step (the global "
                                    "batch is split into this many mini-batches)")
    tis: bool = opt(False, help="DLC off-policy correction: weight tokens by min(pi_old / pi_cal, tis_cap) "
                                '(docs/ALGORITHMS.md, "DLC"); the product of both ratios below in one weight; '
                                "use mismatch_correction / shift_correction instead to treat them apart")
    tis_cap: float = opt(2.0, help="truncation C of the importance weight")
    mismatch_correction: str = opt("none", help="correction of the numerical mismatch pi_old / "
                                                "pi_policy(engine): none|token-tis|seq-tis|token-mis|seq-mis")
    mismatch_cap: float = opt(2.0, help="cap C of the mismatch correction (truncation "
                                        "point, or upper bound of masked IS)")
    mismatch_mask_low: float = opt(0.0, help="masked IS of the mismatch also drops ratios "
                                             "below this (0 = no lower bound; only for *-mis)")
    shift_correction: str = opt("none", help="correction of DLC's intended shift pi_policy(engine) "
                                             "/ pi_cal: none|token-tis|seq-tis|token-mis|seq-mis")
    shift_cap: float = opt(2.0, help="cap C of the shift correction (truncation point, or upper bound of masked IS)")
    shift_mask_low: float = opt(0.0, help="masked IS of the shift also drops ratios below "
                                          "this (0 = no lower bound; only for *-mis)")

    def is_dapo(self) -> bool:
        return self.dynamic_sampling or self.overlong_shaping or self.clip_eps_high > self.clip_eps_low


@dataclass
class DLCConfig:
    """Distribution-level calibration: sample from softmax((z_policy - lam * z_memory) / T) (docs/ALGORITHMS.md)."""

    enabled: bool = opt(True, help="train a memory model and calibrate rollouts with it")
    lam: float = opt(0.3, help="balance factor lambda >= 0 (0 = plain sampling, memory still trained). "
                               "While the memory model matches the policy, lambda acts like temperature "
                               "1 / (1 - lambda) on every token; the plausibility tau below limits that")
    plausibility_tau: Optional[float] = opt(None, help="plausibility constraint tau in (0, 1]: only tokens "
                                                       "with z >= max z + log(tau) may be sampled; null = off")


# ----------------------------------------------------------------------------------------------- data
@dataclass
class TaskConfig:
    """Prompts and verifier."""

    name: str = opt("synthetic", help="task: synthetic (built-in multi-answer task) | synthetic_coupled (its "
                                      "over-sharpening-study variant: per-query answer sets, family habits, "
                                      "exceptions) | math (dataset files; math-verify or task.reward_fn)")
    path: Optional[str] = opt(None, help="dataset file(s) for `math`: .jsonl, .json "
                                         "or .parquet (comma-separated for several)")
    format: Optional[str] = opt(None, help="dataset layout preset: gsm8k | math | deepscaler | dapo "
                                           "| verl (sets prompt_key / answer_key); unset = keys")
    skip_malformed: bool = opt(False, help="skip malformed dataset rows (counted and "
                                           "reported) instead of failing with file/line/field")
    num_queries: int = opt(64, help="synthetic task: number of distinct queries")
    answers_per_query: int = opt(4, help="synthetic task: correct answers (modes) per query")
    seed: int = opt(0, help="seed of the synthetic task and of prompt order")
    prompt_key: Optional[str] = opt(None, help="prompt field of `math` rows, dotted for nested "
                                               "fields (unset: the format's, else \"prompt\")")
    answer_key: Optional[str] = opt(None, help="gold-answer field of `math` rows, e.g. reward_model.ground_truth "
                                               "(unset: the format's, else \"answer\")")
    tokenizer: Optional[str] = opt(None, help="HF tokenizer folder for `math` (the synthetic "
                                              "task ships its own character tokenizer)")
    chat_template: str = opt("auto", help="prompt rendering: auto (tokenizer's chat template if any) "
                                          "| tokenizer (required) | raw | path to a .jinja file")
    system_prompt: Optional[str] = opt(None, help="system message put before every prompt (chat "
                                                  "template) or its text (raw); unset = none")
    enable_thinking: Optional[bool] = opt(None, help="Qwen3's enable_thinking switch passed to the "
                                                     "chat template; unset = the template's default")
    reward_fn: Optional[str] = opt(None, help='custom reward "module:function": fn(row: dict, response: '
                                              "str) -> float | (float, dict); unset = math-verify")
    verify_workers: int = opt(2, help="verifier worker processes (each call has a timeout "
                                      "that works off the main thread); 0 = verify in-process")
    verify_timeout_s: float = opt(10.0, help="seconds one verifier call may take before "
                                             "it scores 0 and counts in verify/timeouts")


@dataclass
class WarmStartConfig:
    """Short supervised phase so RLVR starts from a policy with several modes (the paper's premise)."""

    enabled: bool = opt(True, help="run the warm start when no checkpoint/init_from is given")
    steps: int = opt(400, help="supervised optimizer steps")
    lr: float = opt(1e-3, help="peak learning rate of the warm start (Adam). 3e-3 left about one "
                               "initialisation in four stuck at ~2.7x the converged loss; 1e-3 with warm-up "
                               "and cosine decay converged for every seed measured (docs/ALGORITHMS.md)")
    warmup_steps: int = opt(40, help="linear lr warm-up steps (at most a tenth of the steps)")
    lr_decay: str = opt("cosine", help="lr decay after the warm-up: cosine | linear | constant")
    min_lr_ratio: float = opt(0.1, help="final lr of the decay, as a fraction of lr")
    gate: bool = opt(True, help="quality gate: stop the run when a warm-started "
                                "model's loss on held-out examples is above max_loss")
    max_loss: Optional[float] = opt(None, help="the gate's bound in nats per response token; null = the task's "
                                               "own (built-in task: 0.7, where converged starts reach 0.47-0.64 "
                                               "and stuck ones 1.0-1.2; tasks without a bound are not gated)")
    eval_examples: int = opt(512, help="held-out examples the gate's loss is measured "
                                       "on (drawn apart from the training examples)")
    batch_size: int = opt(64, help="sequences per step")
    incorrect_fraction: float = opt(0.3, help="share of incorrect answers in the supervised data")
    cache_dir: str = opt("~/.cache/megatron_rlvr/warm_start", help="cache folder (keyed by a hash of the "
                                                                   "relevant config) so reruns skip it")


@dataclass
class EvalConfig:
    """Periodic evaluation of the policy ALONE (lambda = 0): rollout metrics of a DLC run describe pi_cal, not the
    policy, so accuracy and mode coverage of the trained policy are measured here."""

    interval: int = opt(5, help="evaluate every N steps (and at the end); 0 disables")
    num_prompts: int = opt(16, help="without eval.sets: evaluate the first N training prompts (fixed)")
    group_size: int = opt(8, help="without eval.sets: responses per evaluation prompt (AVG@G / PASS@G)")
    temperature: float = opt(1.0, help="sampling temperature of the evaluation")
    sets: list = opt(factory=list, help="held-out sets: list of {name, path, samples (k, default "
                                        "8), max_new_tokens, limit, format, prompt_key, answer_key}")
    with_dlc: bool = opt(False, help="also evaluate pi_cal (DLC sampling at dlc.lam), reported as eval_cal/...")


@dataclass
class ChecksConfig:
    """In-loop invariants that stop a run with one clear error instead of training on garbage."""

    logprob_gap: str = opt("error", help="step-0 gap between the trainer's recomputed log pi_old "
                                         "and the engine's log pi_policy (mean |diff| over "
                                         "response tokens): error (stop the run) | warn | off")
    logprob_gap_tolerance: Optional[float] = opt(None, help="tolerance of that gap; null = by dtype (1e-3 "
                                                            "when trainer and engine both compute in float32, "
                                                            "0.05 with bfloat16/float16 on either side)")


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class CheckpointConfig:
    """Megatron dist-checkpointing of models, optimizers, RNG and data position."""

    save_interval: int = opt(10, help="save every N steps (0 = only at the end)")
    load: str = opt("auto", help="resume: auto (latest in <run_dir>/checkpoints if any) | none | a checkpoint folder")
    keep_last: int = opt(2, help="keep this many latest checkpoints (0 keeps all)")
    export_hf: bool = opt(True, help="export both models to Hugging Face format at the end of the run")
    allow_config_change: list = opt(factory=list, help="fields that may differ from the checkpoint's config "
                                                       "on resume (each change is recorded in the run folder)")
    verify: str = opt("sha256", help="integrity record checked on resume: sha256 (sizes and "
                                     "checksums of every file) | size (sizes only, faster)")


@dataclass
class LoggingConfig:
    """Metrics sinks."""

    progress: bool = opt(True, help="rich progress bar with a live summary")
    tensorboard: bool = opt(True, help="TensorBoard event files under <run_dir>/tb")
    wandb: bool = opt(False, help="log to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = opt("megatron-rlvr", help="W&B project")
    plots: bool = opt(True, help="write PNG plots of the over-sharpening curves at the end")
    save_rollouts: bool = opt(False, help="save every step's rollouts (for train-only "
                                          "replay) under <run_dir>/rollouts")


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
    task: TaskConfig = opt(factory=TaskConfig, help="prompts and verifier")
    warm_start: WarmStartConfig = opt(factory=WarmStartConfig, help="short supervised phase before RL")
    eval: EvalConfig = opt(factory=EvalConfig, help="periodic evaluation of the policy alone")
    checks: ChecksConfig = opt(factory=ChecksConfig, help="in-loop invariants that stop a bad run")
    checkpoint: CheckpointConfig = opt(factory=CheckpointConfig, help="checkpointing, resume and Hugging Face export")
    logging: LoggingConfig = opt(factory=LoggingConfig, help="metrics sinks")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass
class EvalSetConfig:
    """One held-out evaluation set (an entry of eval.sets)."""

    name: str = opt(help="name in metrics and the final table (e.g. math500)")
    path: str = opt(help="dataset file(s), in any layout training reads")
    samples: int = opt(8, help="responses per prompt: AVG@k over them, PASS@k for k = 1, 2, 4, ... up to this")
    max_new_tokens: Optional[int] = opt(None, help="response budget of this set (unset: rollout.max_new_tokens)")
    limit: Optional[int] = opt(None, help="evaluate only the first N rows (unset: all)")
    format: Optional[str] = opt(None, help="dataset layout preset (unset: task.format)")
    prompt_key: Optional[str] = opt(None, help="prompt field (unset: the set's format's, else task.prompt_key)")
    answer_key: Optional[str] = opt(None, help="answer field (unset: the set's format's, else task.answer_key)")
