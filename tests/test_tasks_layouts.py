"""Data stage: every published dataset layout loads as written, and every malformed variant is refused (or skipped)
with file, line/row, field and fix."""

import json

import pytest

from megatron_rlvr.config import ConfigError, TaskConfig, load_config
from megatron_rlvr.tasks import FORMATS, DatasetError, load_math_rows, math_equal, resolve_keys

GSM8K = [{"question": "Natalia sold 48 clips in April and half as many in May. Total?",
          "answer": "In May she sold 48/2 = <<48/2=24>>24.\n48+24 = <<48+24=72>>72\n#### 72"}]
MATH = [{"problem": "Simplify 4/6.", "solution": "Divide by 2: $\\boxed{\\frac{2}{3}}$.", "level": "Level 1"}]
DEEPSCALER = [{"problem": "What is 8 * 9?", "answer": "72", "solution": "8 * 9 = 72"},
              {"problem": "Compute 1 + 2.", "answer": "3", "solution": "\\boxed{3}"}]
VERL = [{"data_source": "math_dapo", "prompt": [{"role": "user", "content": "What is 6 * 7?"}],
         "ability": "MATH", "reward_model": {"ground_truth": "42", "style": "rule-lean"},
         "extra_info": {"index": "a1"}}]


def write(path, rows):
    """`rows` in the file type named by `path`'s suffix, the way the publishing framework writes them."""
    p = str(path)
    if p.endswith(".jsonl"):
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    elif p.endswith(".json"):
        path.write_text(json.dumps(rows, indent=2))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), p)
    return p


def load(path, fmt=None, **kw):
    return load_math_rows(path, *resolve_keys(fmt, kw.pop("prompt_key", None), kw.pop("answer_key", None)), **kw)


def test_every_format_preset_is_documented_with_its_fields():
    assert set(FORMATS) == {"gsm8k", "math", "deepscaler", "dapo", "verl"}
    for name, layout in FORMATS.items():
        assert layout.prompt_key and layout.answer_key and layout.doc


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_gsm8k_layout_keeps_the_part_after_the_hashes(tmp_path, suffix):
    data = load(write(tmp_path / f"gsm8k{suffix}", GSM8K), "gsm8k")
    assert data.rows[0].answer == "72" and data.rows[0].prompt.startswith("Natalia")


def test_math_layout_reads_the_last_box_of_the_solution(tmp_path):
    data = load(write(tmp_path / "math500.jsonl", MATH), "math")
    assert data.rows[0].answer == "\\frac{2}{3}" and data.rows[0].record["level"] == "Level 1"


def test_deepscaler_as_published_is_a_json_array(tmp_path):
    data = load(write(tmp_path / "deepscaler.json", DEEPSCALER), "deepscaler")
    assert [r.answer for r in data.rows] == ["72", "3"] and [r.line for r in data.rows] == [1, 2]


def test_json_object_of_rows_and_object_with_one_array_both_load(tmp_path):
    by_id = tmp_path / "by_id.json"
    by_id.write_text(json.dumps({"p1": DEEPSCALER[0], "p2": DEEPSCALER[1]}))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": DEEPSCALER}))
    assert [r.answer for r in load(str(by_id), "deepscaler").rows] == ["72", "3"]
    assert [r.answer for r in load(str(wrapped), "deepscaler").rows] == ["72", "3"]


@pytest.mark.parametrize("fmt", ["dapo", "verl"])
def test_verl_parquet_reads_chat_messages_and_the_nested_ground_truth(tmp_path, fmt):
    data = load(write(tmp_path / "dapo.parquet", VERL), fmt)
    row = data.rows[0]
    assert row.prompt == [{"role": "user", "content": "What is 6 * 7?"}] and row.answer == "42"


def test_dotted_answer_key_without_a_preset(tmp_path):
    data = load(write(tmp_path / "d.jsonl", VERL), prompt_key="prompt", answer_key="reward_model.ground_truth")
    assert data.rows[0].answer == "42"


def test_a_literal_dotted_column_wins_over_nesting(tmp_path):
    data = load(write(tmp_path / "d.jsonl", [{"q": "x?", "a.b": "1", "a": {"b": "2"}}]), prompt_key="q",
                answer_key="a.b")
    assert data.rows[0].answer == "1"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**VERL[0], "reward_model": {"style": "rule"}},
         r"d.jsonl:2: field 'reward_model.ground_truth': missing \(the answer field\); reward_model has \['style'\]"),
        ({**VERL[0], "reward_model": "42"},
         r"d.jsonl:2: field 'reward_model.ground_truth': missing \(the answer field\): reward_model is a str"),
        ({**VERL[0], "prompt": []}, r"d.jsonl:2: field 'prompt': empty list of chat messages"),
        ({**VERL[0], "prompt": [{"role": "user"}]}, r"d.jsonl:2: field 'prompt': message 0 is .*not \{'role'"),
        ({**VERL[0], "prompt": [{"role": "robot", "content": "x"}]}, r"field 'prompt': message 0 has role 'robot'"),
        ({**VERL[0], "prompt": [{"role": "system", "content": "be brief"}]}, r"no non-empty user message"),
    ],
)
def test_malformed_nested_rows_name_line_and_dotted_field(tmp_path, bad, message):
    path = write(tmp_path / "d.jsonl", [VERL[0], bad])
    with pytest.raises(DatasetError, match=message) as info:
        load(path, "verl")
    assert info.value.line == 2 and "fix:" in str(info.value)
    assert len(load(path, "verl", skip_malformed=True).rows) == 1


def test_invalid_utf8_line_is_a_dataset_error_with_line_and_byte_offset(tmp_path):
    path = tmp_path / "d.jsonl"
    first = (json.dumps(DEEPSCALER[0]) + "\n").encode()
    bad = b'{"problem": "caf\xe9?", "answer": "1"}\n'  # latin-1 e-acute: not UTF-8
    path.write_bytes(first + bad + (json.dumps(DEEPSCALER[1]) + "\n").encode())
    offset = len(first) + bad.index(b"\xe9")
    with pytest.raises(DatasetError, match=rf"d.jsonl:2: invalid UTF-8 at byte offset {offset} \(byte 0xe9") as info:
        load(str(path), "deepscaler")
    assert info.value.line == 2 and "task.math.skip_malformed=true" in str(info.value)
    data = load(str(path), "deepscaler", skip_malformed=True)
    assert [r.answer for r in data.rows] == ["72", "3"] and "invalid UTF-8" in data.skipped[0]


def test_invalid_utf8_in_a_json_file_names_the_byte_offset(tmp_path):
    path = tmp_path / "d.json"
    raw = b'[{"problem": "caf\xe9", "answer": "1"}]'
    path.write_bytes(raw)
    offset = raw.index(0xE9)
    with pytest.raises(DatasetError, match=rf"d.json: invalid UTF-8 at byte offset {offset} "):
        load(str(path), "deepscaler")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"problem": "x", "answer": ', r"d.json: not valid JSON \(.* at line 1 column"),
        ('"just a string"', r"d.json: the file holds a JSON str, not rows"),
        ('{"a": 1, "b": 2}', r"d.json: a JSON object that is neither rows keyed by id nor one array"),
        ('[{"problem": "x", "answer": "1"}, 5]', r"d.json:2: row is a int, not an object"),
    ],
)
def test_malformed_json_files_are_refused_with_the_reason(tmp_path, text, message):
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load(str(tmp_path / "d.json"), "deepscaler")


def test_parquet_without_the_nested_column_is_a_file_error(tmp_path):
    path = write(tmp_path / "d.parquet", [{"prompt": "x", "answer": "1"}])
    with pytest.raises(DatasetError, match=r"field 'reward_model.ground_truth': no such column.*task.math.format"):
        load(path, "verl", skip_malformed=True)


def test_deepscaler_with_the_default_keys_names_the_fix(tmp_path):
    path = write(tmp_path / "deepscaler.json", DEEPSCALER)
    with pytest.raises(DatasetError, match=r"deepscaler.json:1: field 'prompt': missing.*set task.math.prompt_key "
                                           r"\(or task.math.format\)"):
        load(path)


def test_explicit_keys_override_the_preset():
    assert resolve_keys("gsm8k", None, None) == ("question", "answer")
    assert resolve_keys("gsm8k", "q", None) == ("q", "answer")
    assert resolve_keys(None, None, None) == ("prompt", "answer")
    with pytest.raises(ValueError, match=r"task.math.format='alpaca': unknown dataset format"):
        resolve_keys("alpaca", None, None)


def test_config_refuses_an_unknown_format_and_a_malformed_reward_fn(tmp_path):
    path = write(tmp_path / "d.jsonl", DEEPSCALER)
    with pytest.raises(ConfigError, match=r"task.math.format='alpaca': unknown dataset format"):
        load_config(overrides=["task.name=math", f"task.math.path={path}", "task.math.format=alpaca"])
    with pytest.raises(ConfigError, match=r"task.math.reward_fn='nocolon': not of the form module:function"):
        load_config(overrides=["task.name=math", f"task.math.path={path}", "task.math.reward_fn=nocolon"])
    assert TaskConfig().math.format is None


@pytest.mark.parametrize("response", ["so \\fbox{72}", "\\boxed{70} no wait \\fbox{72}", "$\\fbox{72}$"])
def test_an_fbox_answer_is_scored_like_a_boxed_one(response):
    assert math_equal("72", response) is True
    assert math_equal("71", response) is False


@pytest.mark.parametrize("recipe", ["qwen3_4b_iac_dlc", "qwen3_8b_iac_dlc", "qwen3_14b_iac_dlc"])
def test_the_qwen3_recipes_load_deepscaler_as_published(tmp_path, recipe):
    from megatron_rlvr.recipes import get_recipe
    from megatron_rlvr.tasks import build_task
    from tests.test_tasks_chat import make_bpe_tokenizer

    path = write(tmp_path / "deepscaler.json", DEEPSCALER)
    tok = make_bpe_tokenizer(tmp_path / "tok")
    cfg = load_config(overrides=[f"task.math.path={path}", f"task.math.tokenizer={tok}",
                                 "task.math.verify_workers=0"], base=get_recipe(recipe))
    task = build_task(cfg.task)
    assert [ex.metadata["answer"] for ex in task.prompts] == ["72", "3"]
    assert task.prompts[0].prompt == ("<|im_start|>system\nPlease reason step by step, and put your final answer "
                                      "within \\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 8 * 9?<|im_end|>\n"
                                      "<|im_start|>assistant\n")
