"""Conversion stage, import: Hugging Face Qwen3 folder -> Megatron dist-checkpoint model folder for any TP/PP.

The output is what ``TrainableModel.save_checkpoint`` writes minus the optimizer: a dist-checkpoint of
``{"model": sharded_state_dict}`` plus ``model_info.json`` (and the HF tokenizer files under ``tokenizer/``), so
``policy.init_from=DIR`` / ``TrainableModel.load_checkpoint(DIR, load_optimizer=False)`` accept it under any layout
(dist-checkpoints reshard on load).

With ``--tp N --pp M`` the checkpoint is written the way a trainer with that layout writes it: N*M ranks (torchrun,
gloo, CPU) each build their Megatron model chunk with the project's provider, fill their shards from the HF tensors
through the name map (:func:`megatron_rlvr.qwen3.live.load_hf_tensors`), and save collectively. A 1-rank
conversion on a machine without a GPU runs in-process. Every rank holds only its own shard plus one logical tensor.
All input validation happens before any process starts or anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron_rlvr.convert import ConversionError
from megatron_rlvr.convert.hf_io import HFFolderReader, atomic_output_dir
from megatron_rlvr.qwen3.hf import shape_from_hf_config
from megatron_rlvr.qwen3.shapes import PRESETS, Qwen3Shape

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def match_preset(shape: Qwen3Shape, preset: Optional[str]) -> Optional[str]:
    """The preset `shape` is: `preset` if given (ConversionError naming each differing field), else the first preset
    with exactly this shape, else None (a custom shape; model_info.json still records every field)."""
    if preset is None:
        return next((name for name, p in PRESETS.items() if p == shape), None)
    if preset.lower() not in PRESETS:
        raise ConversionError(f"--preset {preset!r} is unknown; choose one of {sorted(PRESETS)}")
    want = PRESETS[preset.lower()]
    diff = [f"{f.name}: config.json {getattr(shape, f.name)!r} vs preset {getattr(want, f.name)!r}"
            for f in fields(Qwen3Shape) if getattr(shape, f.name) != getattr(want, f.name)]
    if diff:
        raise ConversionError(f"the Hugging Face config does not match preset {preset!r}: " + "; ".join(diff)
                              + " (drop --preset, or convert the model the preset describes)")
    return preset.lower()


def check_layout(shape: Qwen3Shape, tp: int, pp: int) -> None:
    problems = []
    if tp < 1 or pp < 1:
        problems.append("tp and pp must be >= 1")
    else:
        for what, n in (("num_key_value_heads", shape.num_key_value_heads),
                        ("num_attention_heads", shape.num_attention_heads), ("vocab_size", shape.vocab_size)):
            if n % tp:
                problems.append(f"--tp {tp} does not divide {what}={n}")
        if shape.num_hidden_layers % pp:
            problems.append(f"--pp {pp} does not divide num_hidden_layers={shape.num_hidden_layers}")
        if shape.tie_word_embeddings and pp > 1:
            # The ranks run on CPU, where megatron-core 0.16.1's LanguageModule moves the last stage's copy of tied
            # embeddings with Tensor.cuda() (setup_embeddings_and_output_layer) and fails.
            problems.append(f"--pp {pp} with tied embeddings cannot be written on CPU ranks; use --pp 1 (the "
                            "checkpoint still loads under any pipeline layout)")
    if problems:
        raise ConversionError("; ".join(problems))


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    tp: int = 1,
    pp: int = 1,
    preset: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
) -> Path:
    """Convert the Hugging Face Qwen3 folder `hf_dir` into a Megatron model folder `out` (atomic); returns `out`."""
    hf_dir = Path(hf_dir).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    if not hf_dir.is_dir():
        raise ConversionError(f"--hf {hf_dir} does not exist or is not a folder")
    shape, _ = shape_from_hf_config(hf_dir)
    preset_name = match_preset(shape, preset)
    reader = HFFolderReader(hf_dir, shape)  # validates every shard, name and shape up front
    check_layout(shape, tp, pp)
    dtype = dtype or reader.dtype
    job = {"hf_dir": str(hf_dir), "shape": {f.name: getattr(shape, f.name) for f in fields(Qwen3Shape)},
           "tp": tp, "pp": pp, "dtype": _DTYPE_NAMES[dtype]}
    with atomic_output_dir(out, overwrite) as tmp:
        job["out"] = str(tmp)
        if tp * pp == 1 and not torch.cuda.is_available() and not dist.is_initialized():
            _write_rank(job)
        else:
            _run_ranks(job, tp * pp)
        from megatron_rlvr.qwen3.model_info import write_model_info  # the one format the trainer writes too

        write_model_info(tmp, preset_name, shape, has_optimizer=False, dtype=job["dtype"], source=str(hf_dir))
        tok = reader.tokenizer_files()
        if tok:
            (tmp / "tokenizer").mkdir()
            for src in tok:
                shutil.copy2(src, tmp / "tokenizer" / src.name)
    return out


def _run_ranks(job: dict, world: int) -> None:
    """Run :func:`_write_rank` on `world` local CPU ranks with torchrun; ConversionError with the log on failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node",
           str(world), "-m", "megatron_rlvr.convert.from_hf", json.dumps(job)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise ConversionError(f"writing the Megatron checkpoint on {world} ranks failed:\n"
                              f"{(res.stdout + res.stderr)[-4000:]}")


def _write_rank(job: dict) -> None:
    """One rank of the import: build this rank's model chunk, fill it from the HF folder, save collectively."""
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.mapping import apply_factories

    from megatron_rlvr.config import ModelConfig, ParallelConfig
    from megatron_rlvr.qwen3.live import load_hf_tensors
    from megatron_rlvr.qwen3.provider import build_gpt_model, transformer_config
    from megatron_rlvr.distributed.parallel import init_distributed

    shape = Qwen3Shape(**job["shape"])
    par = ParallelConfig(tp=job["tp"], pp=job["pp"])
    ctx = init_distributed({"model": par})
    try:
        # The local layer spec on CPU: the checkpoint keys are the same as Transformer-Engine's (MEGATRON-NOTES.md).
        model_cfg = ModelConfig(parallel=par, dtype=job["dtype"], transformer_impl="local")
        config = transformer_config(shape, model_cfg, perform_initialization=False)  # every weight is overwritten
        model = build_gpt_model(shape, model_cfg, pre_process=parallel_state.is_pipeline_first_stage(),
                                post_process=parallel_state.is_pipeline_last_stage(), config=config)
        load_hf_tensors([model], shape, HFFolderReader(Path(job["hf_dir"]), shape).get)
        sharded = model.sharded_state_dict()
        apply_factories(sharded)
        _give_views_their_own_storage(model, sharded)
        dist_checkpointing.save({"model": sharded}, job["out"])
    finally:
        ctx.destroy()


def _give_views_their_own_storage(model: torch.nn.Module, sharded: dict) -> None:
    """Replace shards that are views of a larger parameter (linear_fc1's gate and up halves) by copies, freeing
    each parameter right after, one at a time.

    dist-checkpointing clones every such view before writing, all at once (``_clone_if_needed`` in megatron-core's
    FileSystemWriterAsync): +1.4 GB for Qwen3-1.7B. The model is discarded after saving, so moving the halves out
    parameter by parameter keeps the peak at the model's own size.
    """
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    by_storage: dict[int, list] = {}
    for sh in nested_values(sharded):
        if isinstance(sh, ShardedTensor) and sh.data.untyped_storage().nbytes() > sh.data.nbytes:
            by_storage.setdefault(sh.data.untyped_storage().data_ptr(), []).append(sh)
    params = {p.untyped_storage().data_ptr(): p for p in model.parameters()}
    for ptr, shards in by_storage.items():
        for sh in shards:
            sh.data = sh.data.clone()
        if ptr in params:
            params[ptr].data = torch.empty(0, dtype=params[ptr].dtype)


if __name__ == "__main__":
    _write_rank(json.loads(sys.argv[1]))
