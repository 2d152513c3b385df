"""Config section of the rollout stage; its checks beside it."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_rlvr import registry
from megatron_rlvr.config.fields import opt, require as _require


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

def validate_rollout(r: RolloutConfig) -> None:
    """The rollout section on its own."""
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
