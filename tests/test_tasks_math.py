"""Data stage: math datasets from JSONL / parquet, their error messages, and math-verify scoring."""

import json
import random

import pytest

from megatron_rlvr.config import MathTaskConfig, TaskConfig
from megatron_rlvr.tasks import CharTokenizer, DatasetError, MathTask, build_task, load_math_rows, math_equal
from megatron_rlvr.tasks.math_task import last_boxed

ROWS = [
    {"prompt": "What is 8 * 9?", "answer": "72"},
    {"prompt": "Simplify 4/6.", "answer": "\\frac{2}{3}"},
    {"prompt": "Natalia sold 48 clips in April and half as many in May. Total?", "answer": "48/2 = 24\n#### 72"},
    {"prompt": "Compute 1 + 2.", "answer": "\\boxed{3}"},
    {"prompt": "What is 6 * 7?", "answer": 42},
]


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    CharTokenizer().save(path)
    return str(path)


def test_jsonl_rows_load_with_gsm8k_and_numeric_answers_normalised(tmp_path):
    data = load_math_rows(write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert [r.answer for r in data.rows] == ["72", "\\frac{2}{3}", "72", "3", "42"]
    assert [r.line for r in data.rows] == [1, 2, 3, 4, 5] and data.skipped == []


def test_parquet_rows_load_with_custom_keys(tmp_path):
    rows = [{"problem": r["prompt"], "solution": str(r["answer"])} for r in ROWS]
    data = load_math_rows(write_parquet(tmp_path / "d.parquet", rows), prompt_key="problem", answer_key="solution")
    assert len(data.rows) == 5 and data.rows[4].answer == "42" and data.rows[4].line == 5


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "x", "answer": ', r"d.jsonl:3: not valid JSON"),
        (json.dumps({"prompt": "x"}), r"d.jsonl:3: field 'answer': missing \(the answer field\).*task.math.answer_key"),
        (json.dumps({"answer": "1"}), r"d.jsonl:3: field 'prompt': missing.*set task.math.prompt_key"),
        (json.dumps({"prompt": "   ", "answer": "1"}), r"d.jsonl:3: field 'prompt': empty prompt"),
        (json.dumps({"prompt": 7, "answer": "1"}), r"d.jsonl:3: field 'prompt': expected a string or a list of chat"),
        (json.dumps({"prompt": "x", "answer": None}), r"d.jsonl:3: field 'answer': expected a string or number"),
        (json.dumps({"prompt": "x", "answer": ""}), r"d.jsonl:3: field 'answer': empty answer"),
        (json.dumps(["x", "1"]), r"d.jsonl:3: line is a list, not an object"),
    ],
)
def test_malformed_jsonl_line_names_file_line_and_field(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], bad_line, ROWS[3]])
    with pytest.raises(DatasetError, match=message) as info:
        load_math_rows(path)
    assert info.value.path == path and info.value.line == 3
    assert "fix:" in str(info.value)


def test_malformed_parquet_row_names_row_and_field(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}, {"prompt": "", "answer": "2"}]
    path = write_parquet(tmp_path / "d.parquet", rows)
    with pytest.raises(DatasetError, match=r"d.parquet:2: field 'answer': expected a string or number, got NoneType"):
        load_math_rows(path)
    data = load_math_rows(path, skip_malformed=True)
    assert [r.prompt for r in data.rows] == ["a"] and len(data.skipped) == 2
    assert "d.parquet:3: field 'prompt': empty prompt" in data.skipped[1]


def test_parquet_without_the_answer_column_is_a_file_error(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [{"prompt": "a", "solution": "1"}])
    with pytest.raises(DatasetError, match=r"field 'answer': no such column; columns are \['prompt', 'solution'\]; "
                                           r"fix: set task.math.answer_key"):
        load_math_rows(path, skip_malformed=True)


def test_skip_malformed_skips_and_counts_bad_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], "not json", {"prompt": "x"}, ROWS[1]])
    data = load_math_rows(path, skip_malformed=True)
    assert len(data.rows) == 2 and len(data.skipped) == 2
    assert "d.jsonl:2:" in data.skipped[0] and "d.jsonl:3: field 'answer'" in data.skipped[1]


def test_a_file_with_no_usable_rows_or_a_wrong_type_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["[]", "{}"])
    with pytest.raises(DatasetError, match=r"no usable rows \(2 malformed skipped\)"):
        load_math_rows(path, skip_malformed=True)
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DatasetError, match=r"d.csv: unsupported file type; fix: use a .jsonl, .json or .parquet"):
        load_math_rows(str(tmp_path / "d.csv"))
    with pytest.raises(DatasetError, match=r"missing.jsonl: file not found"):
        load_math_rows(str(tmp_path / "missing.jsonl"))


def test_last_boxed_matches_nested_braces():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{2}{3}} end") == "\\boxed{\\frac{2}{3}}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize(
    "gold, response, correct",
    [
        ("72", "The answer is \\boxed{72}.", True),
        ("72", "First \\boxed{70}, corrected: \\boxed{72}", True),
        ("72", "First \\boxed{72}, corrected: \\boxed{70}", False),
        ("72", "So the final answer is 72.", True),
        ("\\frac{2}{3}", "\\boxed{\\frac{4}{6}}", True),
        ("\\boxed{3}", "\\boxed{3}", True),
        ("72", "I think it is 71.", False),
        ("72", "", False),
    ],
)
def test_math_verify_scores_the_last_boxed_or_final_answer(gold, response, correct):
    assert math_equal(gold, response) is correct


def test_math_task_scores_token_ids_and_warm_start_mixes_right_and_wrong(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    task = build_task(TaskConfig(name="math", math=MathTaskConfig(path=path, tokenizer=tokenizer_dir)))
    assert isinstance(task, MathTask) and len(task.prompts) == 5
    ex = task.prompts[0]
    assert ex.prompt_ids[0] == task.tokenizer.bos_id and ex.metadata["line"] == 1
    assert task.score(ex, task.tokenizer.encode("so \\boxed{72}", add_eos=True)) == (1.0, 0)
    assert task.score(ex, task.tokenizer.encode("so \\boxed{73}")) == (0.0, -1)
    data = task.warm_start_examples(60, 0.5, random.Random(0))
    by_prompt = {tuple(e.prompt_ids): e for e in task.prompts}
    rewards = [task.score(by_prompt[tuple(p)], r)[0] for p, r in data]
    assert 10 < sum(rewards) < 50


def test_math_task_config_errors_name_the_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"task.math.tokenizer=None.*fix: set task.math.tokenizer"):
        build_task(TaskConfig(name="math", math=MathTaskConfig(path=path)))
    with pytest.raises(ValueError, match=r"task.math.path=None"):
        build_task(TaskConfig(name="math", math=MathTaskConfig(tokenizer="x")))
