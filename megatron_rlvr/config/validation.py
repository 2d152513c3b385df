"""Validation of the whole tree, once at start-up: every invalid value raises one `ConfigError` naming the
field, the value, the problem and the fix."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from megatron_rlvr import registry
from megatron_rlvr.config.building import _build, describe_tree
from megatron_rlvr.config.tree import (LR_DECAY_STYLES, ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS, LOSS_AGG_MODES,
                                       AlgorithmConfig, ConfigError, DLCConfig, EvalSetConfig, ModelConfig,
                                       OptimConfig, RunConfig, TaskConfig)
from megatron_rlvr.qwen3.shapes import PRESETS, Qwen3Shape


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
    _require(r.engine in registry.ENGINES, "rollout.engine", r.engine, "unknown rollout engine",
             f"use {registry.ENGINES.spoken()}")
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
             f"use {registry.KL_ESTIMATORS.spoken()}")
    _require(a.entropy_coef >= 0, "algorithm.entropy_coef", a.entropy_coef, "must be >= 0", "use 0 to disable")
    _require(a.ppo_epochs >= 1, "algorithm.ppo_epochs", a.ppo_epochs, "must be >= 1", "use 1 or more")
    _require(a.micro_batch_size >= 1, "algorithm.micro_batch_size", a.micro_batch_size, "must be >= 1", "use 1+")
    _require(a.max_tokens_per_micro_batch >= 0, "algorithm.max_tokens_per_micro_batch", a.max_tokens_per_micro_batch,
             "must be >= 0", "use 0 (micro_batch_size sequences) or a token budget such as 16384")
    _require(a.memory_max_tokens_per_micro_batch >= 0, "algorithm.memory_max_tokens_per_micro_batch",
             a.memory_max_tokens_per_micro_batch, "must be >= 0",
             "use 0 (the policy update's micro-batching) or a token budget such as 32768")
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
    _require(t.name in registry.TASKS, "task.name", t.name, "unknown task", f"use {registry.TASKS.spoken()}")
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
