"""Data stage: math problems from JSONL / parquet (DeepScaleR, GSM8K, MATH style), scored with math-verify.

Each row has a prompt field and an answer field (names configurable). Answers may be LaTeX ("\\boxed{3}",
"\\frac{2}{3}"), plain ("72") or GSM8K's "reasoning #### 72" (the part after the last "####" is the answer); a
number is accepted as an answer. Responses are scored on their last \\boxed{...} when they have one, otherwise on
the final answer math-verify extracts. A malformed row raises `DatasetError` naming the file, the line (JSONL) or
row (parquet, 1-based), the field and the fix; with `skip_malformed=True` it is skipped and counted instead.
"""

from __future__ import annotations

import json
import os
import random
import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megatron_rlvr.tasks.base import Example, Task, zipf_weights
from megatron_rlvr.tasks.tokenizer import Tokenizer


class DatasetError(ValueError):
    """A dataset file or row that cannot be used; names the file, line/row and field, and the fix."""

    def __init__(self, path: str, line: Optional[int], field: Optional[str], problem: str, fix: str):
        self.path, self.line, self.field, self.problem, self.fix = path, line, field, problem, fix
        where = path if line is None else f"{path}:{line}"
        what = "" if field is None else f" field {field!r}:"
        super().__init__(f"dataset error: {where}:{what} {problem}; fix: {fix}")


@dataclass(frozen=True)
class MathRow:
    prompt: str
    answer: str
    source: str
    line: int


@dataclass
class LoadedDataset:
    rows: list[MathRow]
    # one "file:line: reason" string per skipped row (skip_malformed=True)
    skipped: list[str]


def _answer_text(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value.rsplit("####", 1)[-1].strip() if "####" in value else value.strip()
    return None


def _check_row(row: Any, path: str, line: int, prompt_key: str, answer_key: str, unit: str) -> MathRow:
    if not isinstance(row, dict):
        raise DatasetError(path, line, None, f"{unit} is a {type(row).__name__}, not an object",
                           f"write one JSON object per line with fields {prompt_key!r} and {answer_key!r}")
    for key, role, setting in ((prompt_key, "prompt", "task.prompt_key"), (answer_key, "answer", "task.answer_key")):
        if key not in row:
            raise DatasetError(path, line, key, f"missing (the {role} field); the {unit} has {sorted(row)}",
                               f"add it, or set {setting} to the field that holds the {role}")
    prompt, answer_raw = row[prompt_key], row[answer_key]
    if not isinstance(prompt, str):
        raise DatasetError(path, line, prompt_key, f"expected a string, got {type(prompt).__name__} {prompt!r:.60}",
                           "store the prompt as text")
    if not prompt.strip():
        raise DatasetError(path, line, prompt_key, "empty prompt", "remove the row or fill in the prompt")
    answer = _answer_text(answer_raw)
    if answer is None:
        raise DatasetError(path, line, answer_key,
                           f"expected a string or number, got {type(answer_raw).__name__} {answer_raw!r:.60}",
                           "store the final answer as text such as \"72\" or \"\\\\frac{2}{3}\"")
    if not answer:
        raise DatasetError(path, line, answer_key, "empty answer", "remove the row or fill in the answer")
    return MathRow(prompt=prompt, answer=answer, source=path, line=line)


def _records(path: str) -> list[tuple[int, Any, Optional[str]]]:
    """(line or row number, record or None, JSON error) for every non-blank line / row of `path`."""
    if path.endswith(".jsonl"):
        out = []
        with open(path, encoding="utf-8") as f:
            for lineno, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    out.append((lineno, json.loads(text), None))
                except json.JSONDecodeError as e:
                    out.append((lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"))
        return out
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for unreadable files
            raise DatasetError(path, None, None, f"not a readable parquet file ({e})",
                               "check the file, or convert it to JSONL") from e
        return [(i, rec, None) for i, rec in enumerate(table.to_pylist(), start=1)]
    raise DatasetError(path, None, None, "unsupported file type", "use a .jsonl or .parquet file")


def load_math_rows(
    paths: str | Sequence[str], prompt_key: str = "prompt", answer_key: str = "answer", skip_malformed: bool = False
) -> LoadedDataset:
    """Read and validate math rows from one or more files (a comma-separated string is split)."""
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    rows: list[MathRow] = []
    skipped: list[str] = []
    for path in paths:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise DatasetError(path, None, None, "file not found", "set task.path to an existing .jsonl/.parquet")
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(path).names
            except Exception as e:
                raise DatasetError(path, None, None, f"not a readable parquet file ({e})",
                                   "check the file, or convert it to JSONL") from e
            for key, setting in ((prompt_key, "task.prompt_key"), (answer_key, "task.answer_key")):
                if key not in names:  # a missing column is a file-level problem, never skipped row by row
                    raise DatasetError(path, None, key, f"no such column; columns are {names}",
                                       f"set {setting} to one of the columns")
        unit = "row" if path.endswith(".parquet") else "line"
        for lineno, rec, json_error in _records(path):
            try:
                if json_error is not None:
                    raise DatasetError(path, lineno, None, json_error, "fix the line or remove it")
                rows.append(_check_row(rec, path, lineno, prompt_key, answer_key, unit))
            except DatasetError as e:
                if not skip_malformed:
                    raise
                skipped.append(str(e))
    if not rows:
        raise DatasetError(",".join(paths), None, None,
                           f"no usable rows ({len(skipped)} malformed skipped)",
                           "check the files and task.prompt_key / task.answer_key")
    return LoadedDataset(rows=rows, skipped=skipped)


def last_boxed(text: str) -> Optional[str]:
    """The last complete \\boxed{...} (or \\fbox{...}) of `text`, braces matched, or None."""
    best = None
    for tag in ("\\boxed{", "\\fbox{"):
        start = text.rfind(tag)
        if start < 0 or (best is not None and start < best[0]):
            continue
        depth, i = 1, start + len(tag)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = (start, text[start:i])
    return None if best is None else best[1]


def _timeout() -> Optional[int]:
    # math-verify times out with SIGALRM, which only the main thread may install
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_equal(gold_answer: str, response_text: str) -> bool:
    """math-verify's verdict on `response_text` (its last \\boxed{} if any) against `gold_answer`."""
    from math_verify import parse, verify

    t = _timeout()
    gold = parse(gold_answer, parsing_timeout=t) or parse(f"${gold_answer}$", parsing_timeout=t)
    boxed = last_boxed(response_text)
    pred = parse(boxed if boxed is not None else response_text, parsing_timeout=t)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=t))


# warm-start phrasings of a correct answer, in decreasing weight (the modes a warm-started policy starts with)
ANSWER_TEMPLATES = ("The answer is \\boxed{{{a}}}.", "\\boxed{{{a}}}", "So the final answer is {a}.")


class MathTask(Task):
    """Math prompts from files; reward 1.0 when math-verify accepts the response. One mode per problem."""

    name = "math"

    def __init__(self, paths: str | Sequence[str], tokenizer: Tokenizer, prompt_key: str = "prompt",
                 answer_key: str = "answer", skip_malformed: bool = False, max_prompt_tokens: Optional[int] = None,
                 length_reason: str = ""):
        data = load_math_rows(paths, prompt_key, answer_key, skip_malformed)
        self.tokenizer = tokenizer
        self.skipped = data.skipped
        add_bos = tokenizer.bos_id is not None
        self.prompts = []
        for r in data.rows:
            ids = tokenizer.encode(r.prompt, add_bos=add_bos)
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                # Checked here, at load: otherwise the run dies at the step that first samples this prompt.
                err = DatasetError(r.source, r.line, prompt_key,
                                   f"the prompt is {len(ids)} tokens, more than the {max_prompt_tokens} that fit"
                                   + (f" ({length_reason})" if length_reason else ""),
                                   "shorten or remove the row, lower rollout.max_new_tokens, or set "
                                   "task.skip_malformed=true to skip such rows")
                if not skip_malformed:
                    raise err
                self.skipped.append(str(err))
                continue
            self.prompts.append(Example(index=len(self.prompts), prompt=r.prompt, prompt_ids=ids,
                                        metadata={"answer": r.answer, "source": r.source, "line": r.line}))
        if not self.prompts:
            raise DatasetError(",".join(sorted({r.source for r in data.rows})), None, None,
                               f"no usable rows ({len(self.skipped)} skipped)", "check the files and the limits")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def num_modes(self, example: Example) -> int:
        return 1

    def score_text(self, example: Example, response_text: str) -> tuple[float, int]:
        return (1.0, 0) if math_equal(example.metadata["answer"], response_text) else (0.0, -1)

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
