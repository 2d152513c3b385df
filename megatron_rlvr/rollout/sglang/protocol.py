"""Rollout stage, SGLang: names shared by the engine (trainer side) and the model/sampler (SGLang side).

Pure data and checks, importable without SGLang, so the trainer, the model folder builder and the tests agree
on one spelling of every key that crosses the process boundary.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

ARCHITECTURE = "DLCQwen3ForCausalLM"
# The package SGLang imports (SGLANG_EXTERNAL_MODEL_PACKAGE) to find the architecture; it holds only models.
MODEL_PACKAGE = "megatron_rlvr.rollout.sglang.models"
# config.json key holding the memory model's own Qwen3 config (the top level is the policy's).
MEMORY_CONFIG_KEY = "dlc_memory_config"
# config.json flag of a folder with no memory stack (runs with dlc.enabled=false): the same architecture, the same
# sampler and per-token statistics, and no memory forward, KV layers or weights to pay for.
POLICY_ONLY_KEY = "dlc_policy_only"
# Weight-name prefixes of the two stacks: "policy.model.layers.0.mlp.up_proj.weight", ...
MODEL_PREFIXES = ("policy", "memory")

# Model -> sampler: the memory model's next-token logits ride in LogitsProcessorOutput.customized_info (None from
# a policy-only model: the sampler then samples the policy alone, with the same kernel and statistics).
MEMORY_LOGITS_KEY = "_dlc_memory_logits"
# Sampler -> caller: per generated token, (log pi_cal(y), log pi_policy(y), entropy of pi_cal), returned by SGLang
# in meta_info under this one key as a list of 3-tuples. One key, not three: SGLang's scheduler copies every
# key's per-request element every decode step in Python; with SGLang's collection loop on a CPU, batch 256 took
# 2.23 ms per step with three keys of numpy elements, 0.66 with one, 0.42 with tuples (sampler.TokenStats).
OUT_STATS = "dlc_token_stats"
STAT_LOGPROB_CAL, STAT_LOGPROB_POLICY, STAT_ENTROPY = 0, 1, 2
# Caller -> sampler: per-request DLC options, carried in SGLang's sampling_params["custom_params"].
PARAM_LAM = "dlc_lam"
PARAM_TAU = "dlc_tau"
PARAM_SEED = "dlc_seed"

# Sampling-backend names the DLC sampler is registered under. On CPU SGLang forces "pytorch" whatever is asked
# for (server_args._handle_cpu_backends), so the sampler must answer to that name there; elsewhere the engine
# asks for "dlc" explicitly.
SAMPLER_BACKEND = "dlc"
CPU_SAMPLER_BACKEND = "pytorch"


def _head_dim(shape: dict) -> int:
    hd = shape.get("head_dim")
    return int(hd) if hd else int(shape["hidden_size"]) // int(shape["num_attention_heads"])


def check_stack_compat(policy: dict, memory: dict) -> None:
    """Raise ValueError unless the two Qwen3 configs can share SGLang's one KV pool and one vocabulary."""
    if policy["vocab_size"] != memory["vocab_size"]:
        raise ValueError(
            f"memory vocab_size {memory['vocab_size']} != policy vocab_size {policy['vocab_size']}: DLC subtracts "
            "logits token by token; use a memory model over the policy's vocabulary"
        )
    if _head_dim(policy) != _head_dim(memory):
        raise ValueError(
            f"memory head_dim {_head_dim(memory)} != policy head_dim {_head_dim(policy)}: SGLang's single KV pool "
            "has one head_dim; pick a memory shape with the policy's head_dim (all Qwen3 presets use 128)"
        )
    if policy["num_key_value_heads"] != memory["num_key_value_heads"]:
        raise ValueError(
            f"memory num_key_value_heads {memory['num_key_value_heads']} != policy's {policy['num_key_value_heads']}:"
            " SGLang's single KV pool has one KV-head count; pick a memory shape with the policy's KV heads"
        )


def dlc_param_names(model: str, named_tensors: Iterable, shape: Optional[object] = None) -> Iterator[tuple]:
    """(`<model>.<HF name>`, tensor) pairs: the DLC model's names of one stack's HF Qwen3 tensors, each name checked
    against `shape` by the converter's name map (a Qwen3Shape; None checks the name's form only)."""
    from megatron_rlvr.qwen3.names import check_hf_name

    if model not in MODEL_PREFIXES:
        raise ValueError(f"model must be one of {MODEL_PREFIXES}, got {model!r}")
    for name, tensor in named_tensors:
        check_hf_name(name, shape, what=f"{model} weight")
        yield f"{model}.{name}", tensor
