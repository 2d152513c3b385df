"""Data stage: verifiable tasks (prompts, tokenizer, verifier, warm-start data) and the resumable prompt sampler.

`build_task(cfg.task)` returns a `Task`, built from the task's own config section (`task.synthetic`, `task.math`):

- ``synthetic`` (default): the built-in shift-cipher task (`ShiftCipherTask`), made for a tiny Qwen3 on a CPU.
  A query is three letters from ``abcdefgh`` followed by a colon, e.g. ``"bed:"``. A response names a shift k
  (one digit) and then writes the query with every letter moved k places forward, cyclically:
  ``"2dgf"`` (b->d, e->g, d->f). Shifts 1..answers_per_query are allowed, so every query has exactly
  `answers_per_query` correct answers, its *modes*; the verifier returns (1.0, k - 1) for a correct response and
  (0.0, -1) for a disallowed shift (0 = copying, or above the allowed range), a slip in a letter, or anything
  malformed. Responses are 4 characters + EOS, so rollouts are cheap (max_new_tokens 16 leaves room).
  Queries are coupled the way the paper's analysis assumes: all share one answer vocabulary and the same letter
  arithmetic, and queries with the same first letter form a *family* that shares which shift the warm start
  prefers and how often it errs. Reinforcing "shift 2" on one query therefore raises it on its relatives, which
  is how collapse spreads (semantic coupling). The warm-start data (`warm_start_examples`) weights the allowed
  shifts of a family by a Zipf law (1/rank: 0.48, 0.24, 0.16, 0.12 for 4 modes) and mixes in incorrect answers
  (disallowed shifts carried out correctly, and slips) at a per-family rate around `incorrect_fraction`, so RLVR
  starts from a policy with several modes at different probabilities and uneven success rates.
- ``synthetic_coupled``: the same cipher built for the over-sharpening study (`CoupledShiftCipherTask`): every
  query allows its own shifts, every family has a habit shift that the warm start over-uses, and a quarter of the
  queries ("exceptions") do not allow their family's habit, so reinforcing it elsewhere harms them (coupling).
- ``math``: prompts and answers from dataset files in the layouts other frameworks publish (`tasks.layouts`:
  .jsonl / .json / .parquet, dotted keys, chat-message prompts, presets gsm8k|math|deepscaler|dapo|verl), rendered
  through the tokenizer's chat template (`tasks.chat`), scored with math-verify on the response's last \\boxed{} (or
  its final answer) or by a user's `task.math.reward_fn`, in verifier worker processes with a per-call timeout
  (`tasks.verify_pool`). Malformed rows raise `DatasetError` naming file, line and field, or are skipped and
  counted with `task.math.skip_malformed=true`.

`CharTokenizer` is the character-level tokenizer of the synthetic task: ids < 128 (the tiny presets' vocabulary),
pad/bos/eos/unk = 0/1/2/3, and `save(folder)` writes a transformers-loadable tokenizer for Hugging Face exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from megatron_rlvr.registry import TASKS
from megatron_rlvr.tasks.base import Example, PromptSampler, Task, zipf_weights
from megatron_rlvr.tasks.chat import ChatSettings, PromptRenderer
from megatron_rlvr.tasks.layouts import FORMATS, DatasetError, load_math_rows, resolve_keys
from megatron_rlvr.tasks.math_task import MathTask, math_equal
from megatron_rlvr.tasks.synthetic import CoupledShiftCipherTask, ShiftCipherTask
from megatron_rlvr.tasks.tokenizer import CharTokenizer, HFTokenizer, Tokenizer

if TYPE_CHECKING:
    from megatron_rlvr.config import TaskConfig


def build_task(task_cfg: "TaskConfig", max_prompt_tokens: Optional[int] = None, length_reason: str = "",
               path: Optional[str] = None, keys: Optional[tuple[str, str]] = None,
               limit: Optional[int] = None, tokenizer: Optional[Tokenizer] = None) -> Task:
    """The task described by a `TaskConfig` (megatron_rlvr.config): the factory registered under task.name
    (`megatron_rlvr.registry.TASKS`) gets that task's own section, `task.<section>`, and the shared task.seed. Math
    prompts longer than `max_prompt_tokens` are refused at load (or skipped with task.math.skip_malformed),
    `length_reason` saying where the limit comes from. A held-out evaluation set reuses the training task's settings
    (tokenizer, chat template, verifier) with its own `path`, (prompt, answer) `keys` and `limit`."""
    if task_cfg.name not in TASKS:
        raise ValueError(f"config error: task.name={task_cfg.name!r}: unknown task; fix: use {TASKS.spoken()}")
    return TASKS.load(task_cfg.name)(task_cfg.section(), seed=task_cfg.seed, max_prompt_tokens=max_prompt_tokens,
                                     length_reason=length_reason, path=path, keys=keys, limit=limit,
                                     tokenizer=tokenizer)


__all__ = [
    "FORMATS", "CharTokenizer", "ChatSettings", "CoupledShiftCipherTask", "DatasetError", "Example", "HFTokenizer",
    "MathTask", "PromptRenderer", "PromptSampler", "ShiftCipherTask", "Task", "Tokenizer", "build_task",
    "load_math_rows", "math_equal", "resolve_keys", "zipf_weights",
]
