"""Config sections of the data and its checks: task (prompts, verifier; each task's settings in its own section),
warm start, evaluation, in-loop invariants; each with its checks beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from megatron_rlvr import registry
from megatron_rlvr.config.fields import DATASET_FORMATS, LR_DECAY_STYLES, opt, require as _require


@dataclass
class SyntheticTaskConfig:
    """The built-in shift-cipher tasks (synthetic, synthetic_coupled)."""

    num_queries: int = opt(64, help="number of distinct queries")
    answers_per_query: int = opt(4, help="correct answers (modes) per query")


def validate_synthetic_task(s: SyntheticTaskConfig, active: bool) -> None:
    """The task.synthetic section (`active`: a synthetic task is the one that runs; its bounds hold either way)."""
    _require(s.num_queries >= 1, "task.synthetic.num_queries", s.num_queries, "must be >= 1", "use 1 or more")
    _require(s.answers_per_query >= 1, "task.synthetic.answers_per_query", s.answers_per_query, "must be >= 1",
             "use 1+")


@dataclass
class MathTaskConfig:
    """The math task: dataset files, tokenizer and prompt rendering, verifier."""

    path: Optional[str] = opt(None, help="dataset file(s): .jsonl, .json or .parquet (comma-separated for several)")
    format: Optional[str] = opt(None, help="dataset layout preset: gsm8k | math | deepscaler | dapo "
                                           "| verl (sets prompt_key / answer_key); unset = keys")
    skip_malformed: bool = opt(False, help="skip malformed dataset rows (counted and "
                                           "reported) instead of failing with file/line/field")
    prompt_key: Optional[str] = opt(None, help="prompt field of the rows, dotted for nested "
                                               "fields (unset: the format's, else \"prompt\")")
    answer_key: Optional[str] = opt(None, help="gold-answer field of the rows, e.g. reward_model.ground_truth "
                                               "(unset: the format's, else \"answer\")")
    tokenizer: Optional[str] = opt(None, help="HF tokenizer folder (the synthetic tasks "
                                              "ship their own character tokenizer)")
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


def validate_math_task(m: MathTaskConfig, active: bool) -> None:
    """The task.math section: the dataset must exist when the math task runs (`active`); the other fields are
    checked either way, so a recipe's math settings are sound before anyone switches to it."""
    if active:
        _require(m.path is not None, "task.math.path", m.path, "the math task needs a dataset file",
                 "pass task.math.path=/path/to/train.jsonl (or .json / .parquet)")
        for p in str(m.path).split(","):
            _require(Path(p.strip()).expanduser().exists(), "task.math.path", m.path,
                     f"dataset file {p.strip()!r} does not exist", "check the path")
    _require(m.format is None or m.format in DATASET_FORMATS, "task.math.format", m.format, "unknown dataset format",
             f"use one of {', '.join(DATASET_FORMATS)}, or leave it unset and give task.math.prompt_key / answer_key")
    _require(m.chat_template in ("auto", "tokenizer", "raw") or Path(m.chat_template).expanduser().is_file(),
             "task.math.chat_template", m.chat_template, "neither auto, tokenizer, raw nor an existing template file",
             "use one of those or the path of a Jinja chat-template file")
    _require(m.reward_fn is None or (":" in m.reward_fn and all(m.reward_fn.split(":", 1))), "task.math.reward_fn",
             m.reward_fn, "not of the form module:function", "write e.g. task.math.reward_fn=my_rewards:score")
    _require(m.verify_workers >= 0, "task.math.verify_workers", m.verify_workers, "must be >= 0",
             "use 0 (in-process) or a few worker processes")
    _require(m.verify_timeout_s > 0, "task.math.verify_timeout_s", m.verify_timeout_s, "must be > 0", "use e.g. 10")


# section name -> (dataclass, validator) of each task section; a registered task names its section
# (megatron_rlvr.registry.TASKS, `Entry.section`); tests/test_config_task_sections.py checks each is declared here
TASK_SECTIONS: dict[str, tuple[type, Callable[[Any, bool], None]]] = {
    "synthetic": (SyntheticTaskConfig, validate_synthetic_task),
    "math": (MathTaskConfig, validate_math_task),
}


@dataclass
class TaskConfig:
    """Prompts and verifier: the task's name and seed; each task's own settings in its section."""

    name: str = opt("synthetic", help="task: synthetic (built-in multi-answer task) | synthetic_coupled (its "
                                      "over-sharpening-study variant: per-query answer sets, family habits, "
                                      "exceptions) | math (dataset files; math-verify or task.math.reward_fn)")
    seed: int = opt(0, help="seed of the synthetic task and of prompt order")
    synthetic: SyntheticTaskConfig = opt(factory=SyntheticTaskConfig, help="the synthetic and synthetic_coupled "
                                                                           "tasks' settings")
    math: MathTaskConfig = opt(factory=MathTaskConfig, help="the math task's settings")

    def section(self) -> Any:
        """The settings section of the task that runs (`task.<its section>`)."""
        return getattr(self, registry.TASKS.entry(self.name).section)


# The flat task section before each task got its own, by the section each field moved to. Frozen on purpose: a new
# task's section adds no "moved" key (and a field name it shares with math, e.g. `path`, still means task.math's).
_FLAT_TASK_FIELDS = {
    "synthetic": ("num_queries", "answers_per_query"),
    "math": ("path", "format", "skip_malformed", "prompt_key", "answer_key", "tokenizer", "chat_template",
             "system_prompt", "enable_thinking", "reward_fn", "verify_workers", "verify_timeout_s"),
}


def moved_task_keys() -> dict[str, str]:
    """Keys of the flat task section (`task.path`) -> where they live now (`task.math.path`); part of
    `config.tree.MOVED_KEYS`."""
    return {f"task.{name}": f"task.{section}.{name}" for section, names in _FLAT_TASK_FIELDS.items() for name in names}


def validate_task(t: TaskConfig) -> None:
    """The task section: a registered name, then every task section (the active one with its requirements)."""
    _require(t.name in registry.TASKS, "task.name", t.name, "unknown task", f"use {registry.TASKS.spoken()}")
    active = registry.TASKS.entry(t.name).section
    for section, (_, validate) in TASK_SECTIONS.items():
        validate(getattr(t, section), section == active)


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

def validate_warm_start(w: WarmStartConfig) -> None:
    """The warm_start section on its own."""
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

def validate_eval(e: EvalConfig) -> None:
    """The eval section's own fields (its sets: `eval_set_configs`, which needs the task)."""
    _require(e.interval >= 0, "eval.interval", e.interval, "must be >= 0", "use 0 to disable")
    _require(e.num_prompts >= 1, "eval.num_prompts", e.num_prompts, "must be >= 1", "use 1 or more")
    _require(e.group_size >= 1, "eval.group_size", e.group_size, "must be >= 1", "use 1 or more")
    _require(e.temperature > 0, "eval.temperature", e.temperature, "must be > 0", "use e.g. 1.0")


@dataclass
class EvalSetConfig:
    """One held-out evaluation set (an entry of eval.sets)."""

    name: str = opt(help="name in metrics and the final table (e.g. math500)")
    path: str = opt(help="dataset file(s), in any layout training reads")
    samples: int = opt(8, help="responses per prompt: AVG@k over them, PASS@k for k = 1, 2, 4, ... up to this")
    max_new_tokens: Optional[int] = opt(None, help="response budget of this set (unset: rollout.max_new_tokens)")
    limit: Optional[int] = opt(None, help="evaluate only the first N rows (unset: all)")
    format: Optional[str] = opt(None, help="dataset layout preset (unset: task.math.format)")
    prompt_key: Optional[str] = opt(None, help="prompt field (unset: the set's format's, else "
                                               "task.math.prompt_key)")
    answer_key: Optional[str] = opt(None, help="answer field (unset: the set's format's, else "
                                               "task.math.answer_key)")

@dataclass
class ChecksConfig:
    """In-loop invariants that stop a run with one clear error instead of training on garbage."""

    logprob_gap: str = opt("error", help="step-0 gap between the trainer's recomputed log pi_old "
                                         "and the engine's log pi_policy (mean |diff| over "
                                         "response tokens): error (stop the run) | warn | off")
    logprob_gap_tolerance: Optional[float] = opt(None, help="tolerance of that gap; null = by dtype (1e-3 "
                                                            "when trainer and engine both compute in float32, "
                                                            "0.05 with bfloat16/float16 on either side)")

def validate_checks(k: ChecksConfig) -> None:
    """The checks section on its own."""
    _require(k.logprob_gap in ("error", "warn", "off"), "checks.logprob_gap", k.logprob_gap, "unknown mode",
             "use error, warn or off")
    if k.logprob_gap_tolerance is not None:
        _require(k.logprob_gap_tolerance > 0, "checks.logprob_gap_tolerance", k.logprob_gap_tolerance,
                 "must be > 0", "use e.g. 0.05, or null for the dtype-aware default")
