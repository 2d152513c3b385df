"""Evaluation stage end to end: a short CPU run of the math task on the tiny model with two held-out sets writes
AVG@k / PASS@k / diversity per set and averaged (metrics.jsonl and TensorBoard), a PASS@k-vs-k plot per evaluation
and the paper's table; `data inspect` shows what the model sees; the table and plot from known numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_rlvr.cli import main as cli_main
from megatron_rlvr.config import ConfigError, load_config
from megatron_rlvr.eval.heldout import mean_over_sets
from megatron_rlvr.eval.report import paper_table, write_pass_at_k_plot
from megatron_rlvr.tasks import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [{"problem": f"{a}+{b}=?", "answer": str(a + b), "solution": "..."} for a in range(1, 5) for b in range(1, 4)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("math")
    (d / "train.json").write_text(json.dumps(TRAIN))  # DeepScaleR as published: a JSON array
    (d / "math500.jsonl").write_text("".join(json.dumps({"problem": f"{a}+5=?", "solution": f"\\boxed{{{a + 5}}}"})
                                             + "\n" for a in range(1, 4)))
    pq.write_table(pa.Table.from_pylist([{"question": f"{a}+1=?", "answer": f"{a} plus 1\n#### {a + 1}"}
                                         for a in range(1, 3)]), str(d / "gsm8k.parquet"))
    CharTokenizer().save(d / "tok")
    return {k: str(d / v) for k, v in (("train", "train.json"), ("math500", "math500.jsonl"),
                                       ("gsm8k", "gsm8k.parquet"), ("tok", "tok"))}


def math_overrides(data: dict) -> list[str]:
    return ["task.name=math", f"task.math.path={data['train']}", "task.math.format=deepscaler",
            f"task.math.tokenizer={data['tok']}", "task.math.verify_workers=1"]


def eval_sets(data: dict) -> str:
    return (f"eval.sets=[{{name: math500, path: {data['math500']}, format: math, samples: 4, max_new_tokens: 12}}, "
            f"{{name: gsm8k, path: {data['gsm8k']}, format: gsm8k, samples: 2}}]")


@pytest.fixture(scope="module")
def math_run(tmp_path_factory, data) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", *math_overrides(data),
           eval_sets(data), "steps=2", "eval.interval=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
           "rollout.max_new_tokens=16", "algorithm.micro_batch_size=4", "warm_start.steps=10",
           "warm_start.batch_size=8", f"warm_start.cache_dir={run_dir.parent / 'cache'}", "logging.progress=false",
           "checkpoint.export_hf=false", "checkpoint.save_interval=0", "eval.with_dlc=true"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return run_dir, res.stdout


def test_math_run_logs_pass_at_k_per_set_and_averaged(math_run):
    run_dir, _ = math_run
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    for key in ("eval/math500/avg_at_4", "eval/math500/pass_at_1", "eval/math500/pass_at_2", "eval/math500/pass_at_4",
                "eval/gsm8k/avg_at_2", "eval/gsm8k/pass_at_1", "eval/gsm8k/pass_at_2", "eval/mean/avg",
                "eval/mean/pass_at_1", "eval/mean/pass_at_2", "eval/math500/answer_entropy",
                "eval/gsm8k/distinct_answers", "eval/math500/verify/timeouts", "diversity/answer_entropy",
                "diversity/distinct_answers", "verify/timeouts"):
        assert key in last, key
    assert "eval/mean/pass_at_4" not in last  # gsm8k drew only 2 samples
    assert {"eval_cal/math500/pass_at_4", "eval_cal/mean/avg"} <= set(last)  # pi_cal too, on request
    assert last["eval/math500/pass_at_1"] == pytest.approx(last["eval/math500/avg_at_4"])
    assert last["eval/math500/pass_at_1"] <= last["eval/math500/pass_at_2"] <= last["eval/math500/pass_at_4"]
    assert last["eval/mean/pass_at_1"] == pytest.approx(
        (last["eval/math500/pass_at_1"] + last["eval/gsm8k/pass_at_1"]) / 2)


def test_math_run_writes_tensorboard_plot_per_evaluation_table_and_first_prompt(math_run, data):
    run_dir, stdout = math_run
    for step in (0, 1):
        assert (run_dir / "plots" / "pass_at_k" / f"step_{step:06d}.png").stat().st_size > 5_000
        saved = json.loads((run_dir / "eval" / f"step_{step:06d}.json").read_text())
        assert set(saved["sets"]) == {"math500", "gsm8k"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert {"eval/math500/pass_at_4", "eval/mean/pass_at_2"} <= set(acc.Tags()["scalars"])
    assert "held-out evaluation at step 1 (policy alone, lambda = 0)" in stdout
    table = stdout[stdout.index("held-out evaluation at step 1"):]
    assert "math500" in table and "(PASS@4: 4 samples)" in table and "average" in table
    assert (run_dir / "first_prompt.txt").read_text() == TRAIN[0]["problem"]  # no chat template: raw text


def test_eval_sets_config_errors_name_the_entry_and_field(data, tmp_path):
    base = math_overrides(data)
    with pytest.raises(ConfigError, match=r"eval.sets\[0\].path=None: missing"):
        load_config(overrides=base + ["eval.sets=[{name: a}]"])
    with pytest.raises(ConfigError, match=r"eval.sets\[1\].samples=0: must be >= 1"):
        load_config(overrides=base + [f"eval.sets=[{{name: a, path: {data['math500']}}}, "
                                      f"{{name: b, path: {data['math500']}, samples: 0}}]"])
    with pytest.raises(ConfigError, match=r"eval.sets\[0\].smaples=8: unknown config key; fix: did you mean "
                                          r"eval.sets\[0\].samples"):
        load_config(overrides=base + [f"eval.sets=[{{name: a, path: {data['math500']}, smaples: 8}}]"])
    with pytest.raises(ConfigError, match=r"eval.sets\[0\].path=.*does not exist"):
        load_config(overrides=base + [f"eval.sets=[{{name: a, path: {tmp_path / 'nope.jsonl'}}}]"])
    with pytest.raises(ConfigError, match=r"eval.sets=.*synthetic task does not read"):
        load_config(overrides=[f"eval.sets=[{{name: a, path: {data['math500']}}}]"])


def test_paper_table_and_mean_from_known_numbers(tmp_path):
    per_set = {"gsm8k": {"avg_at_8": 0.5, "pass_at_1": 0.5, "pass_at_8": 0.875},
               "aime24": {"avg_at_4": 0.25, "pass_at_1": 0.25, "pass_at_4": 0.5}}
    table = paper_table(per_set, step=49)
    assert table.splitlines()[1].split() == ["benchmark", "AVG@8", "PASS@8"]
    assert table.splitlines()[2].split() == ["gsm8k", "50.0", "87.5"]
    assert table.splitlines()[3].split()[:3] == ["aime24", "25.0", "50.0"] and "(PASS@4: 4 samples)" in table
    assert table.splitlines()[4].split() == ["average", "37.5", "68.8"]
    assert mean_over_sets(per_set) == {"avg": 0.375, "pass_at_1": 0.375}
    assert write_pass_at_k_plot(per_set, tmp_path / "p.png", "t").stat().st_size > 5_000


def test_data_inspect_prints_rows_gold_and_rendered_prompt(data, capsys):
    assert cli_main(["data", "inspect", *math_overrides(data), eval_sets(data)]) == 0
    out = capsys.readouterr().out
    assert "rows loaded: 12   skipped: 0" in out
    assert "gold answer of the first row" in out and out.count("\n2\n") == 0 and "train.json:1): 2" in out
    assert "prompt rendering: raw (the tokenizer has no chat template)" in out
    assert "\n1+1=?\n" in out
    assert "eval set math500: 3 rows (0 skipped), 4 samples each; first gold answer 6" in out
    assert "eval set gsm8k: 2 rows (0 skipped), 2 samples each; first gold answer 2" in out


def test_data_inspect_reports_skipped_rows_and_a_bad_file_in_one_line(data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    raw = b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "1"}\n{"problem": "x"}\n'
    bad.write_bytes(raw)
    offset = raw.index(0xE9)  # byte offset in the file, not in the line
    args = ["data", "inspect", "task.name=math", f"task.math.path={bad}", "task.math.format=deepscaler",
            f"task.math.tokenizer={data['tok']}", "task.math.verify_workers=0"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"dataset error: {bad}:2: invalid UTF-8 at byte offset {offset} ")
    assert cli_main(args + ["task.math.skip_malformed=true"]) == 0
    out = capsys.readouterr().out
    assert "rows loaded: 1   skipped: 2" in out and "bad.jsonl:3: field 'answer': missing" in out


def test_train_stops_on_a_bad_file_with_the_same_one_line_error_as_inspect(data, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"problem": "1+1=?", "answer": "2"}, {"problem": "2+2=?"}]))
    args = ["task.name=math", f"task.math.path={bad}", "task.math.format=deepscaler",
            f"task.math.tokenizer={data['tok']}"]
    assert cli_main(["data", "inspect", *args]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"dataset error: {bad}:2: field 'answer': missing (the answer field)")
    res = subprocess.run([sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={tmp_path / 'run'}", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == line


def test_an_eval_set_without_format_inherits_the_training_keys_and_its_own_format_wins(data, tmp_path):
    from megatron_rlvr.config import EvalSetConfig, MathTaskConfig, TaskConfig
    from megatron_rlvr.eval.heldout import build_eval_task
    from megatron_rlvr.tasks import HFTokenizer

    (tmp_path / "q.jsonl").write_text(json.dumps({"q": "3+3=?", "gold": {"v": "6"}}) + "\n")
    task_cfg = TaskConfig(name="math", math=MathTaskConfig(path=data["train"], prompt_key="q", answer_key="gold.v",
                                                           verify_workers=0))
    tok = HFTokenizer(data["tok"])
    inherited = build_eval_task(task_cfg, EvalSetConfig(name="a", path=str(tmp_path / "q.jsonl")), tok)
    assert inherited.keys == ("q", "gold.v") and inherited.prompts[0].metadata["answer"] == "6"
    own = build_eval_task(task_cfg, EvalSetConfig(name="b", path=data["math500"], format="math", limit=2), tok)
    assert own.keys == ("problem", "solution") and [e.metadata["answer"] for e in own.prompts] == ["6", "7"]
