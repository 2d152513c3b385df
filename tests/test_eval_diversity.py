"""Evaluation stage: diversity metrics (docs/ALGORITHMS.md, "Diversity metrics") on hand-made responses with known
values, for evaluation groups and for a packed rollout batch."""

import math

import pytest

from megatron_rlvr.eval.diversity import (
    answer_entropy,
    distinct_answers,
    distinct_ngram_ratio,
    diversity_metrics,
    pairwise_similarity,
    rollout_diversity,
    word_ngrams,
)
from megatron_rlvr.rollout.types import Generation, pack_generations
from megatron_rlvr.tasks import ShiftCipherTask
from megatron_rlvr.tasks.math_task import final_answer


def test_answer_entropy_counts_no_answer_as_one_outcome():
    assert answer_entropy(["72", "72", "71", None]) == pytest.approx(1.5 * math.log(2))  # p = 1/2, 1/4, 1/4
    assert answer_entropy(["72"] * 8) == 0.0
    assert answer_entropy(["1", "2", "3", "4"]) == pytest.approx(math.log(4))
    assert answer_entropy([None, None]) == 0.0


def test_distinct_answers_ignores_responses_without_one():
    assert distinct_answers(["72", "72", "71", None]) == 2 and distinct_answers([None]) == 0


def test_word_ngrams_and_short_responses():
    assert word_ngrams("a b c") == [("a", "b"), ("b", "c")]
    assert word_ngrams("2dgf") == [("2dgf",)] and word_ngrams("  ") == []


def test_distinct_ngram_ratio_and_pairwise_similarity_of_hand_made_solutions():
    assert distinct_ngram_ratio(["a b c", "a b d"]) == pytest.approx(3 / 4)  # ab, bc, ab, bd
    assert pairwise_similarity(["a b c", "a b d"]) == pytest.approx(1 / 3)  # {ab, bc} vs {ab, bd}
    assert distinct_ngram_ratio(["x y", "x y", "z"]) == pytest.approx(2 / 3)
    assert pairwise_similarity(["x y", "x y", "z"]) == pytest.approx((1 + 0 + 0) / 3)
    assert pairwise_similarity(["only one"]) is None


def test_math_final_answers_are_normalised_boxes_or_last_numbers():
    assert final_answer("so \\boxed{\\dfrac{2}{3}}.") == "\\frac{2}{3}"
    assert final_answer("\\fbox{ 72 }") == "72" and final_answer("it is 1,234.") == "1234"
    assert final_answer("no idea") is None


def test_diversity_metrics_average_over_prompts_and_skip_groups_with_one_correct_response():
    groups = [
        (["so \\boxed{72}", "so \\boxed{72}", "\\boxed{71}", "no idea"], [True, True, False, False]),
        (["1", "2", "3", "4"], [True, False, False, False]),
    ]
    m = diversity_metrics(groups, final_answer)
    assert m["answer_entropy"] == pytest.approx((1.5 * math.log(2) + math.log(4)) / 2)
    assert m["distinct_answers"] == pytest.approx((2 + 4) / 2)
    assert m["correct_groups"] == 1.0  # only the first prompt has two correct responses
    assert m["correct_distinct_2gram"] == pytest.approx(1 / 2)  # two copies of one 2-gram
    assert m["correct_pairwise_sim"] == pytest.approx(1.0)


def test_rollout_diversity_reads_a_packed_batch_by_group():
    task = ShiftCipherTask(num_queries=4, answers_per_query=4)
    tok = task.tokenizer
    texts = [["1bcd", "1bcd", "2cde", "5fgh"], ["3xyz", "3xyz", "3xyz", "3xyz"]]
    correct = [[True, True, True, False], [False] * 4]
    gens, groups, flags = [], [], []
    for g, (ts, cs) in enumerate(zip(texts, correct)):
        for t, c in zip(ts, cs):
            ids = tok.encode(t, add_eos=True)
            gens.append(Generation([1, 97, 58], ids, [0.0] * len(ids), [0.0] * len(ids), "stop"))
            groups.append(g)
            flags.append(float(c))
    batch = pack_generations(gens, flags, groups, tok.pad_id)
    m = rollout_diversity(batch, task)
    assert m["diversity/answer_entropy"] == pytest.approx((1.5 * math.log(2) + 0.0) / 2)
    assert m["diversity/distinct_answers"] == pytest.approx((3 + 1) / 2)
    assert m["diversity/correct_distinct_2gram"] == pytest.approx(2 / 3)  # 1bcd, 1bcd, 2cde
    assert m["diversity/correct_pairwise_sim"] == pytest.approx(1 / 3)


def test_pairwise_similarity_uses_the_first_16_correct_responses():
    texts = ["same words here"] * 16 + [f"other {i} words" for i in range(48)]
    assert pairwise_similarity(texts) == 1.0  # the 48 different ones lie beyond the first 16
