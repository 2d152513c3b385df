"""Rollout stage, SGLang: the out-of-tree model package SGLang imports in each of its processes.

SGLang loads it through SGLANG_EXTERNAL_MODEL_PACKAGE (set by the engine, inherited by SGLang's spawned
children) and registers every module's `EntryClass`. Importing it also installs the DLC sampler backend, so the
sampler exists in every scheduler process that can build the DLC model.
"""

from megatron_rlvr.rollout.sglang.sampler import register as _register_sampler

_register_sampler()
