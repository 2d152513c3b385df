"""Name -> factory tables of the pluggable parts: advantage estimators, loss aggregations, KL estimators, tasks and
rollout engines.

Torch-free on purpose: config validation (`megatron_rlvr.config.validation`) reads the names, and the `--help`
text lists them, without importing a stage. Each entry names its factory as "module:attribute", imported the first
time a stage asks for it (`Registry.load`), so a registry costs nothing until a name is used.

Adding an estimator, an aggregation, a KL estimator, a task or an engine: write its factory (a new module, or a
function beside its siblings) and add one `Entry` line here; validation, the error messages and the stage's
dispatch follow from the table. A task also names its config section, `task.<section>` (a dataclass and its
validator in megatron_rlvr.config.data, registered in TASK_SECTIONS), which is what its factory receives.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class Entry:
    """One registered name: `target` is "package.module:attribute" of its factory; `traits` are flags the config
    checks read (e.g. an estimator's "group": its baseline needs >= 2 responses per prompt); `section` is the config
    section a task reads, `task.<section>` (megatron_rlvr.config.data.TASK_SECTIONS; tasks only)."""

    name: str
    target: str
    summary: str
    traits: frozenset[str] = frozenset()
    section: str = ""


class Registry:
    """An ordered, read-only table of `Entry`s of one kind (the order is the one error messages list)."""

    def __init__(self, kind: str, entries: list[Entry]):
        self.kind = kind
        self._entries = {e.name: e for e in entries}
        if len(self._entries) != len(entries):
            raise ValueError(f"{kind}: duplicate names in {[e.name for e in entries]}")

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def with_trait(self, trait: str) -> tuple[str, ...]:
        return tuple(n for n, e in self._entries.items() if trait in e.traits)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def load(self, name: str) -> Callable[..., Any]:
        """The factory registered under `name` (imported on first use)."""
        module, _, attr = self.entry(name).target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def spoken(self, last: str = "or") -> str:
        """The names as a phrase for messages: "a, b or c"."""
        names = list(self._entries)
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


_EST = "megatron_rlvr.advantage.estimators"
# fn(rewards float64 (N,), GroupIndex, eps, batch_ids or None) -> advantages float64 (N,); docs/ALGORITHMS.md
ESTIMATORS = Registry("advantage estimator", [
    Entry("grpo", f"{_EST}:grpo", "(r - group mean) / (group std + eps), std unbiased", frozenset({"group"})),
    # Dr.GRPO's advantages are the centred rewards; its constant loss divisor is algorithm.loss_agg's choice
    Entry("drgrpo", f"{_EST}:centred", "r - group mean (Dr.GRPO)", frozenset({"group"})),
    Entry("rloo", f"{_EST}:rloo", "r - mean of the other G - 1 rewards", frozenset({"group"})),
    Entry("reinforce_pp_baseline", f"{_EST}:reinforce_pp_baseline", "r - group mean, whitened over the batch",
          frozenset({"group"})),
    Entry("raw", f"{_EST}:raw", "A = r (allows groups of one)"),
    Entry("mean", f"{_EST}:centred", "r - group mean", frozenset({"group"})),
])

_LOSS = "megatron_rlvr.update.losses"
# fn(masked (N, T), mask (N, T) bool, values, max_response_len, global_token_count, global_seq_count) -> scalar
LOSS_AGGREGATIONS = Registry("loss aggregation", [
    Entry("token-mean", f"{_LOSS}:token_mean", "sum over tokens / global token count (DAPO)"),
    Entry("seq-mean-token-mean", f"{_LOSS}:seq_mean_token_mean", "mean over sequences of token means (GRPO)"),
    Entry("seq-mean-token-sum-norm", f"{_LOSS}:seq_mean_token_sum_norm",
          "sum over tokens / (max_response_len * global sequence count) (Dr.GRPO)"),
])

# fn(log_r = log pi_ref - log pi_theta) -> per-token KL(pi_theta || pi_ref) estimate
KL_ESTIMATORS = Registry("KL estimator", [
    Entry("k1", f"{_LOSS}:kl_k1", "-log r (unbiased, can be negative)"),
    Entry("k2", f"{_LOSS}:kl_k2", "log(r)^2 / 2 (biased, low variance)"),
    Entry("k3", f"{_LOSS}:kl_k3", "r - 1 - log r (unbiased, >= 0)"),
])

# fn(section, *, seed, max_prompt_tokens, length_reason, path, keys, limit, tokenizer) -> Task, where `section` is
# the task's own config section task.<section> and `seed` is task.seed
TASKS = Registry("task", [
    Entry("synthetic", "megatron_rlvr.tasks.synthetic:build_shift_cipher", "the built-in shift-cipher task",
          section="synthetic"),
    Entry("synthetic_coupled", "megatron_rlvr.tasks.synthetic:build_coupled_shift_cipher",
          "the shift cipher built for the over-sharpening study", section="synthetic"),
    Entry("math", "megatron_rlvr.tasks.math_task:build_math_task", "math datasets scored by math-verify",
          section="math"),
])

# fn(cfg, *, engine_index, device, dtype, tokenizer, run_dir) -> RolloutEngine
ENGINES = Registry("rollout engine", [
    Entry("embedded", "megatron_rlvr.rollout.embedded:build_engine", "in-process HF Qwen3 modules with KV cache"),
    Entry("sglang", "megatron_rlvr.rollout.sglang:build_engine", "SGLang with DLC inside the engine"),
])
