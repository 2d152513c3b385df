"""In-loop invariants of the RL step that stop a run with one clear error instead of training on garbage.

At step 0 nothing has been updated yet, so two things must agree (slime checks the same in its CI runs):
- the trainer's recomputed log pi_old and the log pi_policy the rollout engine returned for the sampled tokens
  (a gap means the engine runs different weights or different math: weight sync, name map, layouts, dtypes);
- pi_old and the trained policy before its first optimizer step (the PPO KL must be ~0).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

# Above this, the trainer's two forward passes of the same weights disagree: a pipeline/TP or RNG bug.
STEP0_PPO_KL_TOLERANCE = 1e-3
# Mean |log pi_old - log pi_policy(engine)| per response token that rounding alone can explain. float32 on both
# sides differs only by summation order (measured 0.0 on CPU, 2e-6 against transformers on CUDA); bfloat16 logits
# carry ~3 significant digits (measured 3.7e-3 for a float32 trainer against a bf16 engine on an H200), and a
# broken weight sync gives gaps of 0.2-3 nats.
LOGPROB_GAP_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.05, torch.float16: 0.05}


class InvariantError(RuntimeError):
    """An in-loop invariant does not hold; the message names both numbers, the likely causes and the switch."""


def logprob_gap_tolerance(trainer_dtype: torch.dtype, engine_dtype: torch.dtype,
                          override: Optional[float] = None) -> float:
    """The tolerance of the step-0 log-prob gap: `override`, else the looser of the two dtypes' tolerances."""
    if override is not None:
        return float(override)
    return max(LOGPROB_GAP_TOLERANCE.get(trainer_dtype, 0.05), LOGPROB_GAP_TOLERANCE.get(engine_dtype, 0.05))


def logprob_gap(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |trainer - engine| log-prob over the response tokens (`mask`), in nats."""
    diff = (trainer_logprobs.float() - engine_logprobs.float())[mask].abs()
    return float(diff.mean()) if diff.numel() else 0.0


def check_logprob_gap(gap: float, mode: str, trainer_dtype: torch.dtype, engine_dtype: torch.dtype,
                      tolerance: Optional[float] = None, log: Callable[[str], None] = print) -> None:
    """Stop (mode "error") or warn (mode "warn") when the step-0 trainer/engine log-prob gap exceeds its tolerance.

    `gap` is `logprob_gap(...)` of the first step the process runs; "off" skips the check.
    """
    if mode == "off":
        return
    tol = logprob_gap_tolerance(trainer_dtype, engine_dtype, tolerance)
    if gap <= tol:
        return
    name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
    msg = (f"step-0 invariant violated: the trainer's recomputed log pi_old and the rollout engine's log pi_policy "
           f"differ by {gap:.4g} nats per response token on average (tolerance {tol:.3g} for a {name(trainer_dtype)}"
           f" trainer and a {name(engine_dtype)} engine). Likely causes: the engine does not hold the trainer's "
           "weights (weight push, HF name map, tensor-parallel slicing), a model-layout difference (qk-norm, RoPE "
           "theta, tied embeddings), different dtypes or attention kernels (set rollout.dtype to the policy's), "
           "or sampling options the trainer does not replay. Fix the cause, or set checks.logprob_gap=warn to "
           "continue anyway (checks.logprob_gap_tolerance=X changes the tolerance)")
    if mode == "warn":
        warnings.warn(msg, stacklevel=2)
        log("warning: " + msg)
        return
    raise InvariantError(msg)


def check_step0_ppo_kl(ppo_kl: float) -> None:
    """Before its first optimizer step the trained policy IS pi_old: their PPO KL must be ~0."""
    if ppo_kl > STEP0_PPO_KL_TOLERANCE:
        raise InvariantError(
            f"step-0 invariant violated: PPO KL(pi_old || pi_theta) = {ppo_kl:.3g} before any update (expected "
            f"~0, tolerance {STEP0_PPO_KL_TOLERANCE:g}): the trainer's log-prob recompute and its training forward "
            "disagree on the same weights (pipeline/tensor-parallel layout, micro-batching or dropout)")
