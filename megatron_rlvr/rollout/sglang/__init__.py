"""Rollout stage: the SGLang engine with DLC inside the engine (policy + memory stacks, fused DLC sampler).

    from megatron_rlvr.rollout.sglang import SGLangEngine, build_model_dir
    path = build_model_dir(dir, policy_shape, memory_shape, policy_state, memory_state)
    engine = SGLangEngine(path, policy_shape=policy_shape, memory_shape=memory_shape)

Layout: `models/` is the out-of-tree model package SGLang imports in its own processes (DLC architecture);
`sampler.py` the DLC sampler backend; `engine.py` the RolloutEngine; `remote.py` attach-to-server helpers;
`model_dir.py` the model folder; `factory.py` the engine's factory (`megatron_rlvr.registry.ENGINES`); `protocol.py` shared keys and the DLC model's weight names. Weights reach
the engine through `megatron_rlvr.weight_sync` (its receiving ends are `receive_tensors` / `receive_broadcast`).
Names are resolved lazily so that importing this package does not import SGLang.
"""

from __future__ import annotations

_LAZY = {
    "SGLangEngine": "engine", "SGLangEngineError": "engine", "build_model_dir": "model_dir",
    "dlc_config_dict": "model_dir", "server_command": "remote", "server_env": "remote", "build_engine": "factory",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
