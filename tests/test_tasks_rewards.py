"""Reward stage: the task.math.reward_fn contract, and verifier calls in worker processes whose per-call timeout
works
off the main thread (a hanging call scores 0, counts in verify/timeouts, and never stalls the others)."""

import json
import sys
import textwrap
import threading
import time

import pytest

from megatron_rlvr.config import MathTaskConfig, TaskConfig
from megatron_rlvr.tasks import CharTokenizer, build_task
from megatron_rlvr.tasks.reward_fn import check_reward_fn, normalize_reward
from megatron_rlvr.tasks.verify_pool import VerifierPool

USER_MODULE = '''
import time

def contains_gold(row, response):
    """1 when the row's nested gold answer appears in the response, with the response length as an extra metric."""
    ok = row["reward_model"]["ground_truth"] in response
    return (1.0 if ok else 0.0), {"chars": len(response)}

def plain(row, response):
    return 0.25

def slow_on_request(row, response):
    if "hang" in response:
        time.sleep(60)
    return 1.0

def one_argument(response):
    return 1.0

def says_yes(row, response):
    return "yes"

def raises(row, response):
    raise KeyError("no such field")
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_rewards_mod.py").write_text(textwrap.dedent(USER_MODULE))
    sys.path.insert(0, str(folder))  # spawned verifier workers inherit sys.path
    yield "my_rewards_mod"
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d")
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "reward_model": {"ground_truth": str(i * 11)}}
            for i in range(1, 4)]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    CharTokenizer().save(folder / "tok")
    return str(folder / "d.jsonl"), str(folder / "tok")


def make_task(files, reward_fn=None, workers=1, timeout=2.0):
    path, tok = files
    return build_task(TaskConfig(name="math", math=MathTaskConfig(path=path, format="verl", tokenizer=tok,
                                                                  reward_fn=reward_fn, verify_workers=workers,
                                                                  verify_timeout_s=timeout)))


def test_reward_fn_receives_the_row_and_its_extra_metrics_are_averaged(files, user_module):
    task = make_task(files, f"{user_module}:contains_gold")
    ex = task.prompts[0]  # gold "11"
    assert task.score_texts([ex, ex], ["it is 11", "it is 12!"]) == [(1.0, 0), (0.0, -1)]
    stats = task.pop_stats()
    assert stats["reward_fn/chars"] == pytest.approx((8 + 9) / 2) and stats["verify/timeouts"] == 0
    assert task.pop_stats() == {"verify/timeouts": 0.0}  # counters reset per step


def test_a_plain_float_reward_is_accepted_and_below_half_is_incorrect(files, user_module):
    task = make_task(files, f"{user_module}:plain", workers=0)
    assert task.score_text(task.prompts[0], "x") == (0.25, -1)


@pytest.mark.parametrize("name, message", [
    ("one_argument", r"its signature \(response\) cannot take \(row, response\).*fix: define it as fn\(row: dict"),
    ("missing", r"cannot load it \(AttributeError"),
])
def test_a_reward_fn_with_the_wrong_signature_is_refused_at_load(files, user_module, name, message):
    with pytest.raises(ValueError, match=rf"config error: task.math.reward_fn='{user_module}:{name}': {message}"):
        make_task(files, f"{user_module}:{name}")


def test_an_unimportable_module_is_refused_at_load():
    with pytest.raises(ValueError, match=r"task.math.reward_fn='no_such_module_x:f': cannot load it \(ModuleNotFound"):
        check_reward_fn("no_such_module_x:f")


def test_a_reward_fn_returning_the_wrong_type_stops_with_the_contract(files, user_module):
    task = make_task(files, f"{user_module}:says_yes")
    with pytest.raises(TypeError, match=r"says_yes' returned reward 'yes' \(str\); it must be a finite float"):
        task.score_text(task.prompts[0], "x")


def test_a_reward_fn_that_raises_scores_zero_and_is_counted(files, user_module):
    task = make_task(files, f"{user_module}:raises")
    assert task.score_text(task.prompts[0], "x") == (0.0, -1)
    assert task.pop_stats()["verify/errors"] == 1 and "KeyError" in task.last_error


def test_normalize_reward_contract():
    assert normalize_reward(1, "m:f") == (1.0, {})
    assert normalize_reward((0.5, {"a": 2}), "m:f") == (0.5, {"a": 2.0})
    for bad in (True, float("nan"), (1.0, 2.0, 3.0), (1.0, {"a": "x"})):
        with pytest.raises(TypeError, match=r"task.math.reward_fn='m:f' returned"):
            normalize_reward(bad, "m:f")


def test_a_hanging_verifier_call_times_out_off_the_main_thread_without_stalling_the_others(files, user_module):
    task = make_task(files, f"{user_module}:slow_on_request", workers=2, timeout=1.5)
    ex = task.prompts[0]
    result = {}

    def score_in_a_thread():
        t0 = time.monotonic()
        result["scores"] = task.score_texts([ex] * 4, ["fine", "hang", "fine", "fine"])
        result["seconds"] = time.monotonic() - t0

    th = threading.Thread(target=score_in_a_thread)
    th.start()
    th.join(timeout=60)
    assert not th.is_alive()
    assert result["scores"] == [(1.0, 0), (0.0, -1), (1.0, 0), (1.0, 0)]
    assert result["seconds"] < 20  # the 60 s sleep was abandoned after 1.5 s (plus worker start-up)
    assert task.pop_stats()["verify/timeouts"] == 1
    # the killed worker was replaced: the pool still serves calls
    assert task.score_texts([ex], ["fine"]) == [(1.0, 0)]


def test_math_verify_runs_in_the_pool_from_a_thread(files):
    task = make_task(files, None, workers=1)
    ex = task.prompts[1]  # gold "22"
    out = []
    th = threading.Thread(target=lambda: out.extend(task.score_texts([ex, ex], ["\\boxed{22}", "\\fbox{21}"])))
    th.start()
    th.join(timeout=60)
    assert out == [(1.0, 0), (0.0, -1)]


def test_pool_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"need workers >= 1 and timeout_s > 0"):
        VerifierPool(0, 1.0)


def test_a_closed_pool_starts_again_on_the_next_call_and_an_empty_batch_starts_nothing():
    pool = VerifierPool(1, 30.0)
    assert pool.map("megatron_rlvr.tasks.math_task:verify_math", []) == [] and pool._procs == []
    target = "megatron_rlvr.tasks.reward_fn:normalize_reward"
    assert pool.map(target, [(0.5, "m:f")])[0].value == (0.5, {})
    pool.close()
    ok, bad = pool.map(target, [(1, "m:f"), ("x", "m:f")])
    assert ok.value == (1.0, {}) and bad.error.startswith("TypeError: task.math.reward_fn='m:f' returned reward 'x'")
    pool.close()
