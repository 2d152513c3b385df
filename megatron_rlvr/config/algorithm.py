"""Config sections of the advantage and update stages (algorithm) and of DLC; their checks beside them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_rlvr import registry
from megatron_rlvr.config.fields import (ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS, LOSS_AGG_MODES,
                                         OFFPOLICY_CORRECTIONS, opt, require as _require)
from megatron_rlvr.config.rollout import RolloutConfig


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

def validate_algorithm(a: AlgorithmConfig, r: RolloutConfig) -> None:
    """The algorithm section, with what it needs of the rollout section (group size, response length, batch)."""
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


@dataclass
class DLCConfig:
    """Distribution-level calibration: sample from softmax((z_policy - lam * z_memory) / T) (docs/ALGORITHMS.md)."""

    enabled: bool = opt(True, help="train a memory model and calibrate rollouts with it")
    lam: float = opt(0.3, help="balance factor lambda >= 0 (0 = plain sampling, memory still trained). "
                               "While the memory model matches the policy, lambda acts like temperature "
                               "1 / (1 - lambda) on every token; the plausibility tau below limits that")
    plausibility_tau: Optional[float] = opt(None, help="plausibility constraint tau in (0, 1]: only tokens "
                                                       "with z >= max z + log(tau) may be sampled; null = off")

def validate_dlc(d: DLCConfig, a: AlgorithmConfig) -> None:
    """The dlc section, and the algorithm's corrections that only make sense with DLC."""
    _require(d.lam >= 0, "dlc.lam", d.lam, "lambda must be >= 0 (it scales the memory logits subtracted)",
             "use 0 (plain sampling) or a positive value such as 0.5")
    if d.plausibility_tau is not None:
        _require(0 < d.plausibility_tau <= 1, "dlc.plausibility_tau", d.plausibility_tau, "must be in (0, 1]",
                 "use e.g. 0.01, or null to disable")
    if a.tis:
        _require(d.enabled, "algorithm.tis", a.tis, "the TIS weight corrects for sampling from pi_cal",
                 "enable dlc or set algorithm.tis=false")
    _validate_offpolicy(a, d)


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
