"""Recipes: functions that return a full `RunConfig`, the starting points of `train --recipe` and `launch --recipe`.

A recipe is plain data (no Megatron import, no file access), so `get_recipe(name)` is instant and a recipe can be
wrapped by nemo-run or edited in Python. Command-line YAML files and `key=value` overrides apply on top of it
(`load_config(path, overrides, base=get_recipe(name))`). Each recipe has a README under `examples/recipes/`.

Paper settings (arXiv 2601.15609, section 5 "Implementation details"): Qwen3-4B/8B/14B policies, a Qwen3-1.7B memory
network for DLC, AdamW for every model, global batch 64 prompts x 8 responses, 2000 steps, checkpoints evaluated
every 50 steps, IAC alpha = 1, 32 H200 GPUs. Values the paper does not state are marked "not in the paper" below.
"""

from __future__ import annotations

from typing import Callable

from megatron_rlvr.config import (
    AlgorithmConfig,
    CheckpointConfig,
    ConfigError,
    DLCConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    OptimizerConfig,
    ParallelConfig,
    RolloutConfig,
    RunConfig,
    MathTaskConfig,
    TaskConfig,
    WarmStartConfig,
)

# The paper's learning rate was lost from its text (the number is missing after "a learning rate of"). 1e-6 is the
# usual AdamW learning rate for RLVR on 4B-14B Qwen models (e.g. VERL's GRPO examples), so every paper recipe uses it
# for the policy and, as the paper applies one optimizer setting to "all models (including the memory network)",
# for the memory model too.
PAPER_LR = 1e-6

# The system prompt Qwen's math models are prompted with; it asks for the final answer in \boxed{}, which is what the
# math verifier reads first.
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def tiny_cpu() -> RunConfig:
    """The embedded CPU default: tiny Qwen3-shaped policy + memory model, IAC + DLC, built-in multi-answer task."""
    return RunConfig()


def _paper_recipe(policy_preset: str, policy_tp: int, run_name: str) -> RunConfig:
    """The paper's RLVR setting (GRPO + IAC + DLC on math) for one policy size; the memory model is Qwen3-1.7B."""
    return RunConfig(
        run_dir=f"runs/{run_name}",
        steps=2000,  # paper: 2000 steps
        policy=ModelConfig(
            preset=policy_preset,
            parallel=ParallelConfig(tp=policy_tp, pp=1, distributed_optimizer=True),
            dtype="bfloat16",
        ),
        # The paper names Qwen3-1.7B as the memory network (Table 3); it shares the policy's vocabulary and its
        # 8 KV heads x head_dim 128, which the fused SGLang model needs. TP=1: 1.7B fits one GPU with room to spare.
        memory=ModelConfig(
            preset="qwen3-1.7b",
            parallel=ParallelConfig(tp=1, pp=1, distributed_optimizer=True),
            dtype="bfloat16",
        ),
        rollout=RolloutConfig(
            engine="sglang",
            prompts_per_step=64,  # paper: global batch size 64
            group_size=8,  # paper: 8 responses per query
            max_new_tokens=4096,  # not in the paper: a common response budget for DeepScaleR-style math RLVR
            temperature=1.0,
            placement="colocated",
        ),
        algorithm=AlgorithmConfig(
            estimator="grpo",
            iac_alpha=1.0,  # paper's default alpha
            loss_agg="token-mean",
            clip_eps_low=0.2,
            clip_eps_high=0.2,
            micro_batch_size=4,  # not in the paper: sequences per micro-batch per data-parallel rank
            # Reasoning responses are ragged: packing a micro-batch's 4 sequences into one THD sequence skips the
            # padding's compute and never needs more memory than the padded (4, L) micro-batch. On an H200 at
            # lognormal lengths (median 1k, max 4k) the packed update ran 2.1x the padded one (BENCHMARKS.md,
            # session 9); packed == padded to float32 rounding (tests/test_packing_update.py).
            pack_sequences=True,
            mini_batches=1,  # one on-policy optimizer step per RL step over the 64 x 8 rollouts
        ),
        # lambda is not recoverable from the paper's text; 0.5 is this project's default balance factor.
        dlc=DLCConfig(enabled=True, lam=0.5, plausibility_tau=None),
        optimizer=OptimizerConfig(
            # weight decay and clipping are not in the paper: 0.01 and 1.0 are VERL's actor defaults, and the
            # paper ran its baselines with VERL's recipes.
            policy=OptimConfig(optimizer="adam", lr=PAPER_LR, weight_decay=0.01, clip_grad=1.0),
            memory=OptimConfig(optimizer="adam", lr=PAPER_LR, weight_decay=0.01, clip_grad=1.0),
        ),
        # DeepScaleR (~40.3k problem-answer pairs) is the paper's training set, read as published (a .json array of
        # {problem, answer, solution}); pass task.math.path and task.math.tokenizer. Prompts go through Qwen3's
        # chat template; the system prompt is Qwen's usual math instruction (not in the paper), so the last
        # \boxed{} holds the answer the verifier reads.
        task=TaskConfig(name="math", math=MathTaskConfig(path=None, format="deepscaler", chat_template="auto",
                                                         system_prompt=MATH_SYSTEM_PROMPT, verify_workers=8,
                                                         verify_timeout_s=10.0)),
        # The warm start exists to give a tiny random model several modes; a pretrained Qwen3 already has them.
        warm_start=WarmStartConfig(enabled=False),
        # The paper evaluates checkpoints every 50 steps with 8 responses per query (AVG@8 / PASS@8) on six
        # held-out benchmarks; pass them as eval.sets (examples/recipes/README.md). Without eval.sets the policy
        # alone (lambda = 0) is evaluated on the first 64 training prompts at the same cadence.
        eval=EvalConfig(interval=50, num_prompts=64, group_size=8),
        checkpoint=CheckpointConfig(save_interval=50, keep_last=2, export_hf=True),
        logging=LoggingConfig(progress=False, tensorboard=True, plots=True),
    )


def qwen3_8b_iac_dlc() -> RunConfig:
    """The paper's main setting: Qwen3-8B policy (TP=2) + Qwen3-1.7B memory, IAC + DLC, 64 prompts x 8, AdamW 1e-6."""
    return _paper_recipe("qwen3-8b", policy_tp=2, run_name="qwen3_8b_iac_dlc")


def qwen3_4b_iac_dlc() -> RunConfig:
    """The paper's setting with a Qwen3-4B policy (TP=1: 4B trains on one GPU with the distributed optimizer)."""
    return _paper_recipe("qwen3-4b", policy_tp=1, run_name="qwen3_4b_iac_dlc")


def qwen3_14b_iac_dlc() -> RunConfig:
    """The paper's setting with a Qwen3-14B policy (TP=4 within a node; 40 heads and 8 KV heads both divide by 4)."""
    return _paper_recipe("qwen3-14b", policy_tp=4, run_name="qwen3_14b_iac_dlc")


def qwen3_1p7b_bench() -> RunConfig:
    """A short single-GPU benchmark run with real Qwen3 shapes: Qwen3-1.7B policy + Qwen3-0.6B memory.

    It measures the cost of a step (rollout with DLC, policy and memory updates, weight push), not learning. The
    task is `math` with a Qwen3 tokenizer (pass task.math.path and task.math.tokenizer): the built-in synthetic
    task's 128-character vocabulary cannot decode Qwen3's 151936 token ids. Without init_from the weights are random, so
    responses run to max_new_tokens, which keeps the token count of every step the same.
    """
    return RunConfig(
        run_dir="runs/qwen3_1p7b_bench",
        steps=20,
        policy=ModelConfig(preset="qwen3-1.7b", parallel=ParallelConfig(tp=1), dtype="bfloat16"),
        memory=ModelConfig(preset="qwen3-0.6b", parallel=ParallelConfig(tp=1), dtype="bfloat16"),
        rollout=RolloutConfig(engine="sglang", prompts_per_step=32, group_size=8, max_new_tokens=512),
        algorithm=AlgorithmConfig(estimator="grpo", iac_alpha=1.0, micro_batch_size=8),
        dlc=DLCConfig(enabled=True, lam=0.5),
        optimizer=OptimizerConfig(policy=OptimConfig(lr=PAPER_LR), memory=OptimConfig(lr=PAPER_LR)),
        task=TaskConfig(name="math", math=MathTaskConfig(path=None)),
        warm_start=WarmStartConfig(enabled=False),
        eval=EvalConfig(interval=0),  # step cost only
        checkpoint=CheckpointConfig(save_interval=0, keep_last=1, export_hf=False),
        logging=LoggingConfig(progress=False, tensorboard=False, plots=False),
    )


# name -> recipe function. Names are the function names; `get_recipe` also accepts hyphens.
RECIPES: dict[str, Callable[[], RunConfig]] = {
    fn.__name__: fn
    for fn in (tiny_cpu, qwen3_4b_iac_dlc, qwen3_8b_iac_dlc, qwen3_14b_iac_dlc, qwen3_1p7b_bench)
}


def get_recipe(name: str) -> RunConfig:
    """A fresh `RunConfig` of recipe `name` (e.g. "qwen3_8b_iac_dlc"); unknown names raise a one-line ConfigError."""
    key = name.strip().lower().replace("-", "_")
    if key not in RECIPES:
        raise ConfigError("--recipe", name, "unknown recipe", f"choose one of {', '.join(RECIPES)}")
    return RECIPES[key]()
