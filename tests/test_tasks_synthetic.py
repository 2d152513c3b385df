"""Data stage: the built-in shift-cipher task, its verifier and its warm-start data."""

import collections
import random

import pytest

from megatron_rlvr.config import SyntheticTaskConfig, TaskConfig
from megatron_rlvr.tasks import ShiftCipherTask, build_task
from megatron_rlvr.tasks.synthetic import shift_text


@pytest.fixture(scope="module")
def task():
    return ShiftCipherTask(num_queries=64, answers_per_query=4, seed=0)


def test_every_query_has_exactly_answers_per_query_distinct_correct_answers(task):
    assert len(task.prompts) == 64
    assert len({ex.prompt for ex in task.prompts}) == 64
    for ex in task.prompts:
        answers = ex.metadata["answers"]
        assert task.num_modes(ex) == 4 and len(set(answers)) == 4
        assert [task.score_text(ex, a) for a in answers] == [(1.0, m) for m in range(4)]


def test_shift_wraps_around_the_alphabet():
    assert shift_text("abh", 1) == "bca"
    assert shift_text("bed", 2) == "dgf"
    assert shift_text("hhh", 7) == "ggg"


def test_verifier_rejects_disallowed_shifts_slips_and_malformed_text(task):
    ex = task.prompts[5]
    q = ex.metadata["query"]
    for k in (0, 5, 6, 7):
        assert task.score_text(ex, f"{k}{shift_text(q, k)}") == (0.0, -1)
        assert task.describe_response(ex, f"{k}{shift_text(q, k)}") == f"wrong shift {k}"
    good = ex.metadata["answers"][1]
    slip = good[:-1] + shift_text(good[-1], 1)
    assert task.score_text(ex, slip) == (0.0, -1)
    assert task.describe_response(ex, slip) == "slip"
    for text in ("", "2", good + "a", good.upper(), "x" + good):
        assert task.score_text(ex, text) == (0.0, -1)
    assert task.score_text(ex, f"  {good}\n") == (1.0, 1)  # surrounding whitespace is not an error


def test_score_reads_token_ids_up_to_the_first_eos(task):
    tok = task.tokenizer
    ex = task.prompts[0]
    ids = tok.encode(ex.metadata["answers"][2], add_eos=True) + tok.encode("zz")
    assert task.score(ex, ids) == (1.0, 2)
    assert task.score(ex, tok.encode(ex.metadata["answers"][2] + "a")) == (0.0, -1)


def test_prompts_start_with_bos_and_responses_fit_in_eight_tokens(task):
    tok = task.tokenizer
    for ex in task.prompts:
        assert ex.prompt_ids[0] == tok.bos_id and tok.decode(ex.prompt_ids) == ex.prompt
        assert all(len(tok.encode(a, add_eos=True)) <= 8 for a in ex.metadata["answers"])
    for _, resp in task.warm_start_examples(500, 0.3, random.Random(1)):
        assert len(resp) <= 8 and resp[-1] == tok.eos_id and max(resp) < 128


def test_task_is_a_pure_function_of_its_seed():
    a, b, c = (ShiftCipherTask(32, 3, s) for s in (7, 7, 8))
    assert [e.prompt for e in a.prompts] == [e.prompt for e in b.prompts]
    assert [e.metadata for e in a.prompts] == [e.metadata for e in b.prompts]
    assert [e.prompt for e in a.prompts] != [e.prompt for e in c.prompts]


def test_queries_of_a_family_share_mode_preferences_and_difficulty(task):
    by_family = collections.defaultdict(list)
    for ex in task.prompts:
        by_family[ex.metadata["family"]].append(ex)
    assert len(by_family) >= 4
    for members in by_family.values():
        assert len({tuple(e.metadata["mode_weights"]) for e in members}) == 1
        assert len({e.metadata["difficulty"] for e in members}) == 1
    dominant = {max(range(4), key=lambda m: ms[0].metadata["mode_weights"][m]) for ms in by_family.values()}
    assert len(dominant) >= 2  # families disagree on the preferred shift


def test_warm_start_mixes_incorrect_answers_and_unevenly_weighted_modes(task):
    data = task.warm_start_examples(8000, 0.3, random.Random(0))
    by_prompt = {tuple(ex.prompt_ids): ex for ex in task.prompts}
    modes_per_family = collections.defaultdict(collections.Counter)
    incorrect = 0
    for prompt_ids, resp in data:
        ex = by_prompt[tuple(prompt_ids)]
        reward, mode = task.score(ex, resp)
        if reward == 0:
            incorrect += 1
        else:
            modes_per_family[ex.metadata["family"]][mode] += 1
    assert 0.25 < incorrect / len(data) < 0.35
    for family, counts in modes_per_family.items():
        weights = next(e.metadata["mode_weights"] for e in task.prompts if e.metadata["family"] == family)
        total = sum(counts.values())
        assert sorted(weights, reverse=True) == pytest.approx([0.48, 0.24, 0.16, 0.12], abs=0.005)
        for m, w in enumerate(weights):  # observed shares follow the Zipf weights of the family
            assert counts[m] / total == pytest.approx(w, abs=0.08)


def test_warm_start_incorrect_answers_include_wrong_strategies_and_slips(task):
    data = task.warm_start_examples(2000, 0.5, random.Random(3))
    by_prompt = {tuple(ex.prompt_ids): ex for ex in task.prompts}
    kinds = collections.Counter(
        task.describe_response(by_prompt[tuple(p)], task.tokenizer.decode(r)).split(" ")[0] for p, r in data
    )
    assert kinds["wrong"] > 100 and kinds["slip"] > 50 and kinds["mode"] > 500 and kinds["malformed"] == 0


def test_bad_task_sizes_raise_with_the_field_and_fix():
    with pytest.raises(ValueError, match=r"task.synthetic.answers_per_query=9.*fix: use 1..6"):
        ShiftCipherTask(8, 9)
    with pytest.raises(ValueError, match=r"task.synthetic.num_queries=600.*\[1, 512\]"):
        ShiftCipherTask(600, 4)
    with pytest.raises(ValueError, match=r"incorrect_fraction=1.0"):
        ShiftCipherTask(8, 2).warm_start_examples(4, 1.0, random.Random(0))


def test_build_task_reads_the_synthetic_section_and_the_task_seed():
    t = build_task(TaskConfig(name="synthetic", seed=2, synthetic=SyntheticTaskConfig(num_queries=16,
                                                                                      answers_per_query=3)))
    assert isinstance(t, ShiftCipherTask) and len(t.prompts) == 16
    assert all(t.num_modes(e) == 3 for e in t.prompts)
    with pytest.raises(ValueError, match="task.name='nope'"):
        build_task(TaskConfig(name="nope"))


# ---- variant synthetic_coupled (the over-sharpening study's task)
@pytest.fixture(scope="module")
def coupled():
    from megatron_rlvr.tasks import CoupledShiftCipherTask

    return CoupledShiftCipherTask(num_queries=64, answers_per_query=4, seed=0)


def test_coupled_queries_each_have_their_own_k_allowed_shifts_labelled_in_shift_order(coupled):
    assert len(coupled.prompts) == 64 and [ex.index for ex in coupled.prompts] == list(range(64))
    for ex in coupled.prompts:
        md = ex.metadata
        assert len(md["shifts"]) == 4 and md["shifts"] == sorted(md["shifts"]) and 0 not in md["shifts"]
        assert [coupled.score_text(ex, a) for a in md["answers"]] == [(1.0, m) for m in range(4)]
        assert [coupled.describe_response(ex, a) for a in md["answers"]] == [f"mode {m}" for m in range(4)]
        assert sum(md["mode_weights"]) == pytest.approx(1.0)
    assert len({tuple(ex.metadata["shifts"]) for ex in coupled.prompts}) > 8  # not one set for all


def test_coupled_regular_queries_allow_the_family_habit_as_their_top_mode_and_exceptions_do_not(coupled):
    exceptions = [ex for ex in coupled.prompts if ex.metadata["exception"]]
    assert 8 <= len(exceptions) <= 32
    for ex in coupled.prompts:
        md = ex.metadata
        habit_text = f"{md['habit']}{shift_text(md['query'], md['habit'])}"
        if md["exception"]:
            assert md["habit"] not in md["shifts"]
            assert coupled.score_text(ex, habit_text) == (0.0, -1)
            assert coupled.describe_response(ex, habit_text) == f"habit {md['habit']}"
        else:
            top = md["shifts"][max(range(4), key=lambda m: md["mode_weights"][m])]
            assert top == md["habit"] and coupled.score_text(ex, habit_text)[0] == 1.0
    habits = {}
    for ex in coupled.prompts:  # one habit per family: the shared structure that couples the queries
        habits.setdefault(ex.metadata["family"], set()).add(ex.metadata["habit"])
    assert all(len(h) == 1 for h in habits.values())


def test_coupled_first_prompts_cover_every_family_so_the_evaluation_sees_them_all(coupled):
    assert {ex.metadata["family"] for ex in coupled.prompts[:8]} == set("abcdefgh")


def test_coupled_warm_start_over_uses_the_habit_on_exceptions_and_skews_modes_elsewhere(coupled):
    rng = random.Random(0)
    pairs = coupled.warm_start_examples(6000, 0.3, rng)
    by_prompt = {tuple(ex.prompt_ids): ex for ex in coupled.prompts}
    labels = collections.Counter()
    for p, r in pairs:
        ex = by_prompt[tuple(p)]
        text = coupled.tokenizer.decode(r[:-1])
        kind = coupled.describe_response(ex, text)
        labels[(ex.metadata["exception"], kind.split()[0])] += 1
    exc_total = sum(v for (e, _), v in labels.items() if e)
    assert 0.3 < labels[(True, "habit")] / exc_total < 0.5  # HABIT_SHARE, plus some incorrect draws hitting it
    assert labels[(False, "habit")] == 0  # on regular queries the habit is a correct mode, labelled as one


def test_build_task_knows_the_coupled_variant_and_the_default_is_unchanged():
    from megatron_rlvr.tasks import CoupledShiftCipherTask

    assert isinstance(build_task(TaskConfig(name="synthetic_coupled")), CoupledShiftCipherTask)
    assert type(build_task(TaskConfig())) is ShiftCipherTask
