"""What every config section is made of: `opt` (a field with its --help text), `ConfigError` and `require`
(one check, one precise error), and the names the checks accept (from the stages' registries, never copied)."""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any, Callable, Optional

from megatron_rlvr import registry

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


def require(cond: bool, path: str, value: Any, problem: str, fix: str) -> None:
    """Raise `ConfigError(path, value, problem, fix)` unless `cond`."""
    if not cond:
        raise ConfigError(path, value, problem, fix)


# the pluggable names come from the stages' registries (megatron_rlvr.registry), never from copies here
ESTIMATORS = registry.ESTIMATORS.names()
GROUP_ESTIMATORS = registry.ESTIMATORS.with_trait("group")
LOSS_AGG_MODES = registry.LOSS_AGGREGATIONS.names()
KL_ESTIMATORS = registry.KL_ESTIMATORS.names()
LR_DECAY_STYLES = ("constant", "cosine", "linear")
OFFPOLICY_CORRECTIONS = ("none", "token-tis", "seq-tis", "token-mis", "seq-mis")
DATASET_FORMATS = ("gsm8k", "math", "deepscaler", "dapo", "verl")  # megatron_rlvr.tasks.layouts.FORMATS
