"""Config sections of the models: parallel layout, model, optimizer; each with its checks beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron_rlvr.config.fields import LR_DECAY_STYLES, opt, require as _require
from megatron_rlvr.qwen3.shapes import PRESETS, Qwen3Shape, get_preset


@dataclass
class ParallelConfig:
    """Megatron parallel layout of one model. Data parallel size is world_size / (tp * pp)."""

    tp: int = opt(1, help="tensor-parallel size; must divide the attention heads and the KV (query) groups")
    pp: int = opt(1, help="pipeline-parallel size; must divide the number of layers")
    vpp: int = opt(1, help="virtual pipeline stages per rank (interleaved schedule); 1 = plain 1F1B")
    distributed_optimizer: bool = opt(False, help="use Megatron's distributed (ZeRO-1) "
                                                  "optimizer across data-parallel ranks")

@dataclass
class ModelConfig:
    """One Qwen3 model (policy or memory) trained under Megatron-Core."""

    preset: str = opt("tiny", help="shape preset: qwen3-0.6b|1.7b|4b|8b|14b|32b or tiny|tiny-tied|tiny-mem|tiny-deep")
    parallel: ParallelConfig = opt(factory=ParallelConfig, help="parallel layout of this model")
    dtype: str = opt("auto", help="parameter/compute dtype: float32|bfloat16|float16 "
                                  '("auto": bfloat16 on GPU, float32 on CPU)')
    init_from: Optional[str] = opt(None, help="initialise from this checkpoint folder (Megatron checkpoint "
                                              "from `convert from-hf`); None = random/warm start")
    transformer_impl: str = opt("auto", help="layer implementation: auto (Transformer-Engine if "
                                             "importable, else local) | local | transformer_engine")
    logprob_impl: str = opt("torch", help="per-token log-probs, entropies and cross-entropy from the logits: torch "
                                          "(chunked PyTorch, Megatron's arithmetic) | triton (fused kernels, one "
                                          "read of the logits forward and one backward; CUDA only)")
    init_seed: int = opt(1234, help="seed for weight initialisation")
    init_device: str = opt("cpu", help="where initial weights are drawn: cpu (the same seed gives the same "
                                       "weights on CPU and GPU, so runs are comparable across devices) | device "
                                       "(drawn on the GPU: faster for large models, but a different draw)")
    megatron: dict = opt(factory=dict, help="extra megatron.core TransformerConfig fields passed "
                                            "through verbatim (e.g. {recompute_granularity: selective})")

    def shape(self) -> Qwen3Shape:
        return get_preset(self.preset)

def validate_model(name: str, m: ModelConfig) -> Qwen3Shape:
    """`m` (the `name` section: policy or memory) on its own; returns its shape."""
    _require(m.preset.lower() in PRESETS, f"{name}.preset", m.preset, "unknown Qwen3 preset",
             f"choose one of {', '.join(PRESETS)}")
    shape = m.shape()
    par = m.parallel
    for k in ("tp", "pp", "vpp"):
        v = getattr(par, k)
        _require(v >= 1, f"{name}.parallel.{k}", v, "must be >= 1", "use a positive integer")
    _require(shape.num_key_value_heads % par.tp == 0, f"{name}.parallel.tp", par.tp,
             f"tensor-parallel size must divide the {shape.num_key_value_heads} query groups (KV heads) of "
             f"{m.preset}", f"use a tp that divides {shape.num_key_value_heads}")
    _require(shape.num_attention_heads % par.tp == 0, f"{name}.parallel.tp", par.tp,
             f"tensor-parallel size must divide the {shape.num_attention_heads} attention heads of {m.preset}",
             f"use a tp that divides {shape.num_attention_heads}")
    _require(shape.vocab_size % par.tp == 0, f"{name}.parallel.tp", par.tp,
             f"tensor-parallel size must divide the vocabulary ({shape.vocab_size}) of {m.preset}",
             "use a tp that divides the vocabulary size")
    layers_per = par.pp * par.vpp
    _require(shape.num_hidden_layers % layers_per == 0, f"{name}.parallel.pp", par.pp,
             f"pp * vpp = {layers_per} must divide the {shape.num_hidden_layers} layers of {m.preset}",
             "choose pp (and vpp) so that every stage holds a whole number of layers")
    _require(par.vpp == 1 or par.pp > 1, f"{name}.parallel.vpp", par.vpp,
             "virtual pipeline stages need pp > 1", "set vpp=1 or pp>=2")
    _require(m.dtype in ("auto", "float32", "bfloat16", "float16"), f"{name}.dtype", m.dtype,
             "unknown dtype", "use auto, float32, bfloat16 or float16")
    _require(m.transformer_impl in ("auto", "local", "transformer_engine"), f"{name}.transformer_impl",
             m.transformer_impl, "unknown layer implementation", "use auto, local or transformer_engine")
    _require(m.logprob_impl in ("torch", "triton"), f"{name}.logprob_impl", m.logprob_impl,
             "unknown log-prob implementation", "use torch or triton")
    _require(m.init_device in ("cpu", "device"), f"{name}.init_device", m.init_device, "unknown init device",
             "use cpu (same weights on every device) or device (faster on GPU)")
    if m.init_from is not None:
        _require(Path(m.init_from).expanduser().exists(), f"{name}.init_from", m.init_from,
                 "checkpoint folder does not exist",
                 "pass a folder written by the trainer or by `megatron-rlvr convert from-hf`")
    return shape


@dataclass
class OptimConfig:
    """Optimizer of one model (Megatron's get_megatron_optimizer)."""

    optimizer: str = opt("adam", help="adam (AdamW with decoupled weight decay) or sgd")
    lr: float = opt(2e-4, help="peak learning rate (suits the tiny embedded run; recipes for Qwen3 sizes use 1e-6)")
    weight_decay: float = opt(0.0, help="weight decay (decoupled)")
    adam_beta1: float = opt(0.9, help="Adam beta1 (first-moment decay)")
    adam_beta2: float = opt(0.999, help="Adam beta2 (second-moment decay)")
    adam_eps: float = opt(1e-8, help="Adam epsilon")
    sgd_momentum: float = opt(0.0, help="SGD momentum")
    clip_grad: float = opt(1.0, help="gradient-norm clip; 0 disables")
    lr_warmup_steps: int = opt(0, help="linear warm-up steps")
    lr_decay_style: str = opt("constant", help="learning-rate decay after the warm-up: constant "
                                               "| cosine | linear (down to min_lr_ratio * lr)")
    lr_decay_steps: int = opt(0, help="steps over which the lr decays (counted from "
                                      "step 0, warm-up included); 0 = no decay")
    min_lr_ratio: float = opt(0.0, help="final lr of the decay, as a fraction of lr")

def validate_optim(name: str, o: OptimConfig) -> None:
    """`o` (the `name` section, e.g. optimizer.policy) on its own."""
    _require(o.optimizer in ("adam", "sgd"), f"{name}.optimizer", o.optimizer, "unknown optimizer",
             "use adam or sgd")
    _require(o.lr > 0, f"{name}.lr", o.lr, "learning rate must be > 0", "use e.g. 1e-6")
    _require(o.weight_decay >= 0, f"{name}.weight_decay", o.weight_decay, "must be >= 0", "use 0 or more")
    for k in ("adam_beta1", "adam_beta2"):
        v = getattr(o, k)
        _require(0 <= v < 1, f"{name}.{k}", v, "must be in [0, 1)", "use e.g. 0.9 / 0.999")
    _require(0 <= o.sgd_momentum < 1, f"{name}.sgd_momentum", o.sgd_momentum, "must be in [0, 1)", "use 0..0.99")
    _require(o.clip_grad >= 0, f"{name}.clip_grad", o.clip_grad, "must be >= 0", "use 0 to disable")
    _require(o.lr_warmup_steps >= 0, f"{name}.lr_warmup_steps", o.lr_warmup_steps, "must be >= 0", "use 0 or more")
    _require(o.lr_decay_style in LR_DECAY_STYLES, f"{name}.lr_decay_style", o.lr_decay_style, "unknown decay style",
             f"use one of {', '.join(LR_DECAY_STYLES)}")
    _require(o.lr_decay_steps >= 0, f"{name}.lr_decay_steps", o.lr_decay_steps, "must be >= 0", "use 0 for no decay")
    if o.lr_decay_steps:
        _require(o.lr_decay_steps > o.lr_warmup_steps, f"{name}.lr_decay_steps", o.lr_decay_steps,
                 f"must exceed lr_warmup_steps={o.lr_warmup_steps} (the decay starts after the warm-up)",
                 "use more decay steps or fewer warm-up steps")
    _require(0 <= o.min_lr_ratio <= 1, f"{name}.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]", "use e.g. 0.1")


@dataclass
class OptimizerConfig:
    """Optimizers of both models."""

    policy: OptimConfig = opt(factory=OptimConfig, help="optimizer of the policy")
    memory: OptimConfig = opt(factory=lambda: OptimConfig(lr=1e-3), help="optimizer of the memory model (trained with "
                                                                         "cross-entropy on each step's rollouts)")
