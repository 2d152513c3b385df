"""Data stage: reading math datasets in the layouts other RLVR frameworks publish them in.

Files: ``.jsonl`` (one JSON object per line), ``.json`` (an array of rows, an object of rows keyed by id, or an
object holding one array of rows) and ``.parquet``. Field names may be dotted paths into nested fields
(``reward_model.ground_truth``). A prompt is either a string or a list of chat messages
(``[{"role": "user", "content": "..."}]``); a gold answer is a string or a number, where GSM8K's
``"reasoning #### 72"`` keeps the part after the last ``####`` and a MATH-style solution keeps the content of its
last ``\\boxed{}``.

Named presets (``task.math.format``) fix which fields are read:

| format      | prompt field   | answer field                | as published by |
|-------------|----------------|-----------------------------|-----------------|
| gsm8k       | question       | answer (``... #### 72``)    | GSM8K (openai/grade-school-math) |
| math        | problem        | solution (last ``\\boxed{}``) | MATH (Hendrycks et al.), MATH500 |
| deepscaler  | problem        | answer                      | DeepScaleR-Preview-Dataset (a .json array) |
| dapo        | prompt (chat)  | reward_model.ground_truth   | DAPO-Math-17k (parquet) |
| verl        | prompt (chat)  | reward_model.ground_truth   | verl's RL parquet layout |

Every refusal is a `DatasetError` naming the file, the line (JSONL) or row (JSON, parquet; 1-based), the field and
the fix; with ``skip_malformed`` a malformed row (bad JSON, invalid UTF-8, a missing or ill-typed field) is
skipped and its reason kept instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

# A prompt as given: plain text, or chat messages [{"role": ..., "content": ...}, ...].
Prompt = Union[str, list]


@dataclass(frozen=True)
class Layout:
    """Which fields of a row hold the prompt and the gold answer."""

    prompt_key: str
    answer_key: str
    doc: str


FORMATS: dict[str, Layout] = {
    "gsm8k": Layout("question", "answer", "GSM8K: question, answer ending in '#### <final answer>'"),
    "math": Layout("problem", "solution", "MATH / MATH500: problem, solution whose last \\boxed{} is the answer"),
    "deepscaler": Layout("problem", "answer", "DeepScaleR: a .json array of {problem, answer, solution}"),
    "dapo": Layout("prompt", "reward_model.ground_truth", "DAPO-Math-17k: prompt = chat messages, "
                   "reward_model.ground_truth"),
    "verl": Layout("prompt", "reward_model.ground_truth", "verl parquet: prompt = chat messages, "
                   "reward_model.ground_truth"),
}
SUFFIXES = (".jsonl", ".json", ".parquet")
CHAT_ROLES = ("system", "user", "assistant")


class DatasetError(ValueError):
    """A dataset file or row that cannot be used; names the file, line/row and field, and the fix."""

    def __init__(self, path: str, line: Optional[int], field: Optional[str], problem: str, fix: str):
        self.path, self.line, self.field, self.problem, self.fix = path, line, field, problem, fix
        where = path if line is None else f"{path}:{line}"
        what = "" if field is None else f" field {field!r}:"
        super().__init__(f"dataset error: {where}:{what} {problem}; fix: {fix}")


@dataclass(frozen=True)
class MathRow:
    prompt: Prompt
    answer: str
    source: str
    line: int
    # the row as read from the file (what a custom reward function receives)
    record: Optional[dict] = None


@dataclass
class LoadedDataset:
    rows: list[MathRow]
    # one "file:line: reason" string per skipped row (skip_malformed=True)
    skipped: list[str]


def resolve_keys(fmt: Optional[str], prompt_key: Optional[str], answer_key: Optional[str]) -> tuple[str, str]:
    """The (prompt, answer) field names: explicit keys win over the format's, which win over prompt/answer."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"config error: task.math.format={fmt!r}: unknown dataset format; fix: use one of "
                         f"{', '.join(FORMATS)} (or leave it unset and give task.math.prompt_key / "
                         "task.math.answer_key)")
    layout = FORMATS.get(fmt) if fmt else None
    return (prompt_key or (layout.prompt_key if layout else "prompt"),
            answer_key or (layout.answer_key if layout else "answer"))


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


def unbox(boxed: str) -> str:
    """The content of a "\\boxed{...}" / "\\fbox{...}" string."""
    return boxed[boxed.index("{") + 1 : -1].strip()


def answer_text(value: Any) -> Optional[str]:
    """The gold answer of a field value: a number as text, GSM8K's part after '####', a solution's last box."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        if "####" in value:
            return value.rsplit("####", 1)[-1].strip()
        boxed = last_boxed(value)
        return unbox(boxed) if boxed is not None else value.strip()
    return None


_MISSING = object()


def get_field(row: dict, key: str) -> Any:
    """`row[key]`, where a dotted key descends into nested objects unless the row has the literal key."""
    if key in row:
        return row[key]
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _missing_field_problem(row: dict, key: str, role: str, unit: str) -> str:
    parts = key.split(".")
    node: Any = row
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            return (f"missing (the {role} field): {'.'.join(parts[:depth])} is a {type(node).__name__}, "
                    "not an object")
        if part not in node:
            where = f"the {unit}" if depth == 0 else f"{'.'.join(parts[:depth])}"
            return f"missing (the {role} field); {where} has {sorted(node)}"
        node = node[part]
    return f"missing (the {role} field)"


def _check_messages(prompt: list, path: str, line: int, key: str) -> list:
    if not prompt:
        raise DatasetError(path, line, key, "empty list of chat messages", "give at least one user message")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DatasetError(path, line, key, f"message {i} is {m!r:.80}, not {{'role': str, 'content': str}}",
                               "write chat messages as [{\"role\": \"user\", \"content\": \"...\"}]")
        if m["role"] not in CHAT_ROLES:
            raise DatasetError(path, line, key, f"message {i} has role {m['role']!r}",
                               f"use one of {', '.join(CHAT_ROLES)}")
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise DatasetError(path, line, key, "no non-empty user message", "add the problem as a user message")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def check_row(row: Any, path: str, line: int, prompt_key: str, answer_key: str, unit: str) -> MathRow:
    """One validated row; a `DatasetError` naming file, line/row, field and fix otherwise."""
    if not isinstance(row, dict):
        raise DatasetError(path, line, None, f"{unit} is a {type(row).__name__}, not an object",
                           f"write one JSON object per {unit} with fields {prompt_key!r} and {answer_key!r}")
    values = {}
    for key, role, setting in ((prompt_key, "prompt", "task.math.prompt_key"),
                               (answer_key, "answer", "task.math.answer_key")):
        values[role] = get_field(row, key)
        if values[role] is _MISSING:
            raise DatasetError(path, line, key, _missing_field_problem(row, key, role, unit),
                               f"add it, or set {setting} (or task.math.format) to the field that holds the {role}")
    prompt, answer_raw = values["prompt"], values["answer"]
    if isinstance(prompt, list):
        prompt = _check_messages(prompt, path, line, prompt_key)
    elif not isinstance(prompt, str):
        raise DatasetError(path, line, prompt_key, f"expected a string or a list of chat messages, got "
                           f"{type(prompt).__name__} {prompt!r:.60}", "store the prompt as text or chat messages")
    elif not prompt.strip():
        raise DatasetError(path, line, prompt_key, "empty prompt", "remove the row or fill in the prompt")
    answer = answer_text(answer_raw)
    if answer is None:
        raise DatasetError(path, line, answer_key,
                           f"expected a string or number, got {type(answer_raw).__name__} {answer_raw!r:.60}",
                           "store the final answer as text such as \"72\" or \"\\\\frac{2}{3}\"")
    if not answer:
        raise DatasetError(path, line, answer_key, "empty answer", "remove the row or fill in the answer")
    return MathRow(prompt=prompt, answer=answer, source=path, line=line, record=row)


# (line or row number, record or None, error or None) of every non-blank line / row of a file
Records = list[tuple[int, Any, Optional[str]]]


def _jsonl_records(path: str) -> Records:
    out: Records = []
    offset = 0
    with open(path, "rb") as f:  # bytes, so an invalid UTF-8 line is one malformed line, not a crash of the read
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                out.append((lineno, None, f"invalid UTF-8 at byte offset {start + e.start} (byte "
                                          f"0x{raw[e.start]:02x}, column {e.start + 1} of the line)"))
                continue
            if not text.strip():
                continue
            try:
                out.append((lineno, json.loads(text), None))
            except json.JSONDecodeError as e:
                out.append((lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"))
    return out


def _json_records(path: str) -> Records:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # one document: nothing to skip, the whole file is unusable
        raise DatasetError(path, None, None, f"invalid UTF-8 at byte offset {e.start} (byte 0x{raw[e.start]:02x})",
                           "re-encode the file as UTF-8") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(path, None, None, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                           "fix the file, or write it as JSONL (one object per line)") from e
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(doc) == 1 and lists:  # {"data": [rows]}
            doc = lists[0]
        elif doc and all(isinstance(v, dict) for v in doc.values()):  # {"id0": row, "id1": row}
            doc = list(doc.values())
        else:
            raise DatasetError(path, None, None, "a JSON object that is neither rows keyed by id nor one array of "
                               f"rows (keys {sorted(doc)[:8]})", "write a JSON array of row objects")
    if not isinstance(doc, list):
        raise DatasetError(path, None, None, f"the file holds a JSON {type(doc).__name__}, not rows",
                           "write a JSON array of row objects")
    return [(i, rec, None) for i, rec in enumerate(doc, start=1)]


def _parquet_records(path: str, keys: Sequence[str]) -> Records:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for unreadable files
        raise DatasetError(path, None, None, f"not a readable parquet file ({e})",
                           "check the file, or convert it to JSONL") from e
    for key, setting in zip(keys, ("task.math.prompt_key", "task.math.answer_key")):
        if key not in names and key.split(".")[0] not in names:  # a missing column is a file-level problem
            raise DatasetError(path, None, key, f"no such column; columns are {names}",
                               f"set {setting} (or task.math.format) to one of the columns")
    return [(i, rec, None) for i, rec in enumerate(table.to_pylist(), start=1)]


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
            raise DatasetError(path, None, None, "file not found", "set task.math.path to an existing "
                               ".jsonl/.json/.parquet file")
        if path.endswith(".jsonl"):
            records, unit = _jsonl_records(path), "line"
        elif path.endswith(".json"):
            records, unit = _json_records(path), "row"
        elif path.endswith(".parquet"):
            records, unit = _parquet_records(path, (prompt_key, answer_key)), "row"
        else:
            raise DatasetError(path, None, None, "unsupported file type", "use a .jsonl, .json or .parquet file")
        for lineno, rec, error in records:
            try:
                if error is not None:
                    raise DatasetError(path, lineno, None, error, f"fix the {unit} or remove it "
                                       "(or set task.math.skip_malformed=true)")
                rows.append(check_row(rec, path, lineno, prompt_key, answer_key, unit))
            except DatasetError as e:
                if not skip_malformed:
                    raise
                skipped.append(str(e))
    if not rows:
        raise DatasetError(",".join(paths), None, None, f"no usable rows ({len(skipped)} malformed skipped)",
                           "check the files and task.math.format / task.math.prompt_key / task.math.answer_key")
    return LoadedDataset(rows=rows, skipped=skipped)
