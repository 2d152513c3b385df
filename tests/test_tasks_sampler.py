"""Data stage: the deterministic, resumable prompt sampler."""

import pytest

from megatron_rlvr.tasks import PromptSampler, ShiftCipherTask


@pytest.fixture(scope="module")
def task():
    return ShiftCipherTask(num_queries=10, answers_per_query=2, seed=0)


def indices(batch):
    return [ex.index for ex in batch]


def test_each_epoch_visits_every_prompt_once_in_a_fresh_order(task):
    s = PromptSampler(task, seed=3)
    e0, e1 = indices(s.next_batch(10)), indices(s.next_batch(10))
    assert sorted(e0) == sorted(e1) == list(range(10))
    assert e0 != e1 and s.state_dict()["epoch"] == 1


def test_equal_seeds_draw_equal_sequences_and_other_seeds_differ(task):
    a, b, c = PromptSampler(task, 3), PromptSampler(task, 3), PromptSampler(task, 4)
    seq = [indices(a.next_batch(7)) for _ in range(5)]
    assert seq == [indices(b.next_batch(7)) for _ in range(5)]
    assert seq != [indices(c.next_batch(7)) for _ in range(5)]


def test_batches_span_epoch_boundaries_without_dropping_prompts(task):
    s = PromptSampler(task, 0)
    drawn = indices(s.next_batch(7)) + indices(s.next_batch(7)) + indices(s.next_batch(6))
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    assert s.state_dict() == {"seed": 0, "epoch": 1, "position": 10, "num_prompts": 10}


def test_resuming_from_a_state_dict_continues_exactly(task):
    full = PromptSampler(task, 5)
    reference = [indices(full.next_batch(4)) for _ in range(9)]
    first = PromptSampler(task, 5)
    got = [indices(first.next_batch(4)) for _ in range(4)]
    state = dict(first.state_dict())  # mid-epoch: epoch 1, position 6
    resumed = PromptSampler(task, 999)  # the state carries the seed
    resumed.load_state_dict(state)
    got += [indices(resumed.next_batch(4)) for _ in range(5)]
    assert got == reference


def test_a_state_from_another_dataset_is_rejected(task):
    s = PromptSampler(task, 0)
    state = s.state_dict() | {"num_prompts": 11}
    with pytest.raises(ValueError, match=r"saved for 11 prompts but the task has 10; fix: resume with the same task"):
        s.load_state_dict(state)
    with pytest.raises(ValueError, match=r"lacks \['position'\]"):
        s.load_state_dict({"seed": 0, "epoch": 0, "num_prompts": 10})
