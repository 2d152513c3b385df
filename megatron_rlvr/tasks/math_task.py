"""Data stage: math problems from dataset files (megatron_rlvr.tasks.layouts), scored with math-verify or a user's
reward function in worker processes (megatron_rlvr.tasks.verify_pool).

Responses are scored on their last \\boxed{...} (or \\fbox{...}) when they have one, otherwise on the final answer
math-verify extracts. Prompts are rendered through the tokenizer's chat template by default
(megatron_rlvr.tasks.chat). Every verifier call runs in a worker process with a per-call timeout
(`task.math.verify_timeout_s`), so one pathological response never stalls a step; timeouts and verifier errors are
counted (`pop_stats`) and score 0.
"""

from __future__ import annotations

import random
import re
import threading
from typing import TYPE_CHECKING, Optional, Sequence

from megatron_rlvr.tasks.base import Example, Task, zipf_weights
from megatron_rlvr.tasks.chat import ChatSettings, PromptRenderer
from megatron_rlvr.tasks.layouts import (  # noqa: F401  (re-exported: the loading API of the math task)
    DatasetError,
    LoadedDataset,
    MathRow,
    last_boxed,
    load_math_rows,
    resolve_keys,
    unbox,
)
from megatron_rlvr.tasks.tokenizer import HFTokenizer, Tokenizer
from megatron_rlvr.tasks.verify_pool import VerifierPool

if TYPE_CHECKING:
    from megatron_rlvr.config import MathTaskConfig

VERIFY_MATH = "megatron_rlvr.tasks.math_task:verify_math"
CALL_REWARD = "megatron_rlvr.tasks.reward_fn:call_reward"


def _timeout() -> Optional[int]:
    # math-verify times out with SIGALRM, which only the main thread may install
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_equal(gold_answer: str, response_text: str, timeout: Optional[int] = -1) -> bool:
    """math-verify's verdict on `response_text` (its last \\boxed{} if any) against `gold_answer`.
    `timeout` -1: math-verify's own 5 s SIGALRM guard where it works (the main thread); None: no guard."""
    from math_verify import parse, verify

    t = _timeout() if timeout == -1 else timeout
    gold = parse(gold_answer, parsing_timeout=t) or parse(f"${gold_answer}$", parsing_timeout=t)
    boxed = last_boxed(response_text)
    if boxed is not None:  # math-verify reads \boxed{} but not \fbox{}: hand it the box's content as math
        boxed = "\\boxed{" + unbox(boxed) + "}"
    pred = parse(boxed if boxed is not None else response_text, parsing_timeout=t)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=t))


def verify_math(gold_answer: str, response_text: str) -> bool:
    """`math_equal` in a verifier worker (the worker's main thread, so math-verify's own guard works there too;
    the pool's per-call timeout is the one that always holds)."""
    return math_equal(gold_answer, response_text)


verify_math.warmup = lambda: math_equal("1", "\\boxed{1}")  # type: ignore[attr-defined]  # imports sympy


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ |\$|\s+")


def final_answer(text: str) -> Optional[str]:
    """The response's final answer as a normalised string: its last box, else its last number; None if neither.
    (String-level: "\\frac{2}{3}" and "2/3" stay different answers; diversity metrics count them apart.)"""
    boxed = last_boxed(text)
    if boxed is not None:
        ans = unbox(boxed)
    else:
        numbers = _NUMBER.findall(text)
        if not numbers:
            return None
        ans = numbers[-1].replace(",", "")
    ans = _LATEX_NOISE.sub("", ans).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    return ans or None


# warm-start phrasings of a correct answer, in decreasing weight (the modes a warm-started policy starts with)
ANSWER_TEMPLATES = ("The answer is \\boxed{{{a}}}.", "\\boxed{{{a}}}", "So the final answer is {a}.")


class MathTask(Task):
    """Math prompts from files; reward 1.0 when math-verify accepts the response (or the user's reward_fn's value).
    One mode per problem."""

    name = "math"

    def __init__(self, paths: str | Sequence[str], tokenizer: Tokenizer, prompt_key: str = "prompt",
                 answer_key: str = "answer", skip_malformed: bool = False, chat: ChatSettings = ChatSettings(),
                 reward_fn: Optional[str] = None, verify_workers: int = 0, verify_timeout_s: float = 10.0,
                 limit: Optional[int] = None, max_prompt_tokens: Optional[int] = None, length_reason: str = ""):
        data = load_math_rows(paths, prompt_key, answer_key, skip_malformed)
        self.paths, self.keys = paths, (prompt_key, answer_key)
        self.tokenizer = tokenizer
        self.skipped = data.skipped
        self.renderer = PromptRenderer(tokenizer, chat)
        self.reward_fn = reward_fn
        if reward_fn is not None:
            from megatron_rlvr.tasks.reward_fn import check_reward_fn

            check_reward_fn(reward_fn)
        self.pool = VerifierPool(verify_workers, verify_timeout_s) if verify_workers > 0 else None
        self._stats: dict[str, float] = {}
        self._lock = threading.Lock()
        rows = data.rows if limit is None else data.rows[:limit]
        self.prompts = []
        for r in rows:
            text, ids = self.renderer.render(r.prompt)
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                # Checked here, at load: otherwise the run dies at the step that first samples this prompt.
                err = DatasetError(r.source, r.line, prompt_key,
                                   f"the prompt is {len(ids)} tokens, more than the {max_prompt_tokens} that fit"
                                   + (f" ({length_reason})" if length_reason else ""),
                                   "shorten or remove the row, lower rollout.max_new_tokens, or set "
                                   "task.math.skip_malformed=true to skip such rows")
                if not skip_malformed:
                    raise err
                self.skipped.append(str(err))
                continue
            meta = {"answer": r.answer, "source": r.source, "line": r.line}
            if reward_fn is not None:
                meta["row"] = r.record
            self.prompts.append(Example(index=len(self.prompts), prompt=text, prompt_ids=ids, metadata=meta))
        if not self.prompts:
            raise DatasetError(",".join(sorted({r.source for r in rows})), None, None,
                               f"no usable rows ({len(self.skipped)} skipped)", "check the files and the limits")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def num_modes(self, example: Example) -> int:
        return 1

    def final_answer(self, response_text: str) -> Optional[str]:
        return final_answer(response_text)

    def score_text(self, example: Example, response_text: str) -> tuple[float, int]:
        return self.score_texts([example], [response_text])[0]

    def _count(self, key: str, value: float = 1.0) -> None:
        with self._lock:
            self._stats[key] = self._stats.get(key, 0.0) + value

    def score_texts(self, examples: Sequence[Example], texts: Sequence[str]) -> list[tuple[float, int]]:
        """Scores of many responses at once (in parallel across the verifier workers)."""
        if self.reward_fn is not None:
            target, calls = CALL_REWARD, [(self.reward_fn, ex.metadata["row"], t) for ex, t in zip(examples, texts)]
        else:
            target, calls = VERIFY_MATH, [(ex.metadata["answer"], t) for ex, t in zip(examples, texts)]
        if self.pool is None:
            from megatron_rlvr.tasks.verify_pool import Outcome, load_function

            fn = load_function(target)
            outcomes = [Outcome(value=fn(*c)) if self.reward_fn else Outcome(value=math_equal(*c)) for c in calls]
        else:
            outcomes = self.pool.map(target, calls)
        out = []
        self._count("verify/calls", len(calls))
        for o in outcomes:
            if o.timed_out:
                self._count("verify/timeouts")
                out.append((0.0, -1))
                continue
            if o.error is not None:
                if o.error.startswith("TypeError: task.math.reward_fn"):  # a broken contract stops the run
                    raise TypeError(o.error.split(": ", 1)[1])
                self._count("verify/errors")
                self.last_error = o.error
                out.append((0.0, -1))
                continue
            if self.reward_fn is None:
                out.append((1.0, 0) if o.value else (0.0, -1))
                continue
            reward, extras = o.value
            for k, v in extras.items():
                self._count(f"reward_fn/{k}", v)
            self._count("reward_fn/_n")
            out.append((reward, 0 if reward > 0.5 else -1))
        return out

    def pop_stats(self) -> dict[str, float]:
        """Verifier counters since the last call: timeouts, errors, and the mean of each reward_fn extra metric."""
        with self._lock:
            s, self._stats = self._stats, {}
        n = s.pop("reward_fn/_n", 0.0)
        out = {k: (v / n if k.startswith("reward_fn/") and n else v) for k, v in s.items()}
        out.setdefault("verify/timeouts", 0.0)
        return out

    def warm_start_examples(
        self, n: int, incorrect_fraction: float, rng: random.Random
    ) -> list[tuple[list[int], list[int]]]:
        """Answers in several phrasings (Zipf-weighted); incorrect ones perturb a numeric answer or box "0"."""
        if not 0 <= incorrect_fraction < 1:
            raise ValueError(f"incorrect_fraction={incorrect_fraction}: must be in [0, 1); fix: use e.g. 0.3")
        weights = zipf_weights(len(ANSWER_TEMPLATES))
        out = []
        for _ in range(n):
            ex = rng.choice(self.prompts)
            answer = ex.metadata["answer"]
            if rng.random() < incorrect_fraction:
                try:
                    answer = str(int(answer) + rng.choice((-2, -1, 1, 2, 10)))
                except ValueError:
                    answer = "0" if answer.strip() != "0" else "1"
            template = rng.choices(ANSWER_TEMPLATES, weights=weights)[0]
            out.append((list(ex.prompt_ids), self.tokenizer.encode(template.format(a=answer), add_eos=True)))
        return out


def build_math_task(cfg: "MathTaskConfig", *, seed: int = 0, max_prompt_tokens: Optional[int] = None,
                    length_reason: str = "", path: Optional[str] = None, keys: Optional[tuple[str, str]] = None,
                    limit: Optional[int] = None, tokenizer: Optional[Tokenizer] = None) -> MathTask:
    """The math task of the task.math section (registered as "math" in megatron_rlvr.registry.TASKS); see
    `build_task`. `seed` (task.seed) is unused: the rows are the files', their order the prompt sampler's."""
    path = path or cfg.path
    if path is None:
        raise ValueError("config error: task.math.path=None: the math task needs a dataset file; fix: pass "
                         "task.math.path=/path/to/train.jsonl (or .json / .parquet)")
    if tokenizer is None and cfg.tokenizer is None:
        raise ValueError("config error: task.math.tokenizer=None: the math task needs a Hugging Face tokenizer "
                         "folder; fix: set task.math.tokenizer to the policy checkpoint's folder (tokenizer.json)")
    pk, ak = keys or resolve_keys(cfg.format, cfg.prompt_key, cfg.answer_key)
    chat = ChatSettings(cfg.chat_template, cfg.system_prompt, cfg.enable_thinking)
    tok = tokenizer or HFTokenizer(cfg.tokenizer)
    return MathTask(path, tok, pk, ak, cfg.skip_malformed, chat=chat, reward_fn=cfg.reward_fn,
                    verify_workers=cfg.verify_workers, verify_timeout_s=cfg.verify_timeout_s,
                    limit=limit, max_prompt_tokens=max_prompt_tokens, length_reason=length_reason)
