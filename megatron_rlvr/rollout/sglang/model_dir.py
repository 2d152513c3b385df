"""Rollout stage, SGLang: build the folder SGLang loads the DLC model from.

    <dir>/config.json          the policy's Qwen3 config, architectures=["DLCQwen3ForCausalLM"],
                               plus "dlc_memory_config": the memory model's own Qwen3 config (or, with no
                               memory model, "dlc_policy_only": true: DLC off decodes the policy alone)
    <dir>/model.safetensors    policy.<HF name> / memory.<HF name> tensors (omitted: start SGLang with
                               load_format="dummy" for random weights, e.g. benchmarks)
    <dir>/tokenizer files      only when a tokenizer is given (the engine runs on token ids, without one)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from megatron_rlvr.qwen3.shapes import Qwen3Shape
from megatron_rlvr.rollout.sglang.protocol import (
    ARCHITECTURE, MEMORY_CONFIG_KEY, POLICY_ONLY_KEY, check_stack_compat, dlc_param_names,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dlc_config_dict(policy: Qwen3Shape, memory: Optional[Qwen3Shape], dtype: str = "bfloat16") -> dict:
    """config.json content of the DLC model for two Qwen3 shapes (memory None: the policy alone)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    cfg = dict(policy.to_hf_config_dict())
    cfg.update(architectures=[ARCHITECTURE], torch_dtype=dtype)
    if memory is None:
        cfg[POLICY_ONLY_KEY] = True
        return cfg
    mem = memory.to_hf_config_dict()
    check_stack_compat(cfg, mem)
    mem.update(torch_dtype=dtype)
    cfg[MEMORY_CONFIG_KEY] = mem
    return cfg


def build_model_dir(
    out_dir: Union[str, os.PathLike],
    policy: Qwen3Shape,
    memory: Optional[Qwen3Shape],
    policy_state: Optional[Mapping[str, torch.Tensor]] = None,
    memory_state: Optional[Mapping[str, torch.Tensor]] = None,
    tokenizer=None,
    dtype: str = "bfloat16",
) -> Path:
    """Write the DLC model folder for SGLang and return its path.

    Args:
        policy, memory: the two Qwen3 shapes (same vocab_size, head_dim and num_key_value_heads); memory None
            builds the policy-only model (DLC off: no memory stack to decode).
        policy_state, memory_state: HF Qwen3 state dicts (names as in transformers' Qwen3ForCausalLM); both or
            neither (without a memory model: policy_state or nothing). Neither: no weight file (start the engine
            with sglang={"load_format": "dummy"}).
        tokenizer: a transformers tokenizer or a folder holding one, copied next to the config; optional.
        dtype: dtype written to config.json and of the saved tensors.
    """
    from safetensors.torch import save_file

    if memory is None and memory_state is not None:
        raise ValueError("memory_state given for a policy-only model folder (memory=None): pass the memory shape too")
    if memory is not None and (policy_state is None) != (memory_state is None):
        raise ValueError("give both policy_state and memory_state, or neither (random weights via load_format=dummy)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dlc_config_dict(policy, memory, dtype), indent=2))
    if policy_state is not None:
        tensors = {}
        stacks = (("policy", policy, policy_state),) + ((("memory", memory, memory_state),) if memory else ())
        for model, shape, state in stacks:
            items = [(k, v) for k, v in state.items() if not (shape.tie_word_embeddings and k == "lm_head.weight")]
            for name, t in dlc_param_names(model, items, shape):
                tensors[name] = t.detach().to("cpu", _DTYPES[dtype]).contiguous()
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        # The project's tokenizers (megatron_rlvr.tasks) write HF-loadable files with `save`; HF ones with
        # `save_pretrained`. The engine itself never loads them (skip_tokenizer_init): they document the folder.
        (tokenizer.save if hasattr(tokenizer, "save") else tokenizer.save_pretrained)(str(out))
    return out
