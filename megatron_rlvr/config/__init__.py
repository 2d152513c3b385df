"""The one typed config tree of a run: dataclasses, loadable from YAML, overridable by dotted `key=value`.

Every field carries a one-line help text in its metadata (`opt(default, help=...)`), shown by `megatron-rlvr
train --help`. `load_config()` builds the tree and validates it once; every invalid value raises `ConfigError`
naming the field, the value and the fix. Megatron and SGLang options live in pass-through dicts (`megatron`,
`sglang`) handed to those libraries as they are, instead of a second copy of their arguments.

Modules: the sections with their checks beside them (`models`, `rollout`, `algorithm`, `data`, `outputs`, made of
`fields`' `opt` and `require`), `tree` (the root `RunConfig`), `validation` (`validate_config`: the order of the
sections' checks and the checks across sections; `check_world_size`, `eval_set_configs`), `building` (dicts ->
dataclasses, overrides, YAML, `describe_tree`), `loading` (`load_config`).
"""

from megatron_rlvr.config.building import parse_overrides
from megatron_rlvr.config.building import describe_tree
from megatron_rlvr.config.loading import load_config
from megatron_rlvr.config.tree import *  # noqa: F401,F403  (every section dataclass and name tuple)
from megatron_rlvr.config.tree import ConfigError, RunConfig  # noqa: F401  (the two most used, named)
from megatron_rlvr.config.validation import (DATASET_FORMATS, OFFPOLICY_CORRECTIONS, check_world_size,  # noqa: F401
                                             eval_set_configs, validate_config)
