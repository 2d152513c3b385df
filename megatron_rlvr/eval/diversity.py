"""Evaluation stage: diversity of the answers and solutions a policy gives one prompt (docs/ALGORITHMS.md,
"Diversity metrics"). On math every problem has one correct answer, so the number of distinct correct answers is
constant; over-sharpening shows instead as the G samples agreeing on one final answer (right or wrong) and as
the correct solutions becoming copies of each other.

Per prompt, over its G responses with final answers a_1..a_G (None: the response gives none):

- `answer_entropy`: H = -sum_a p_a ln p_a (nats), p_a the share of responses with final answer a; responses
  without an answer form one more outcome. 0 when all agree; ln G when all differ.
- `distinct_answers`: the number of distinct final answers (responses without one not counted).
- `correct_distinct_ngram`: over the correct responses' word n-grams (n = 2), the number of distinct n-grams
  divided by the total number of n-grams (1: no n-gram repeats across or within the solutions).
- `correct_pairwise_sim`: the mean Jaccard similarity |A ∩ B| / |A ∪ B| of the n-gram sets of every pair of
  correct responses (1: identical wording); of the first 16 correct responses when there are more.

A response with fewer than n words counts as one n-gram (its whole word sequence). The two solution-level metrics
need >= 2 correct responses; prompts with fewer are left out of their average, and `correct_groups` counts those
left in. Every metric is averaged over prompts.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import Callable, Optional, Sequence

NGRAM = 2
# pairwise similarity is over pairs of the first 16 correct responses (120 pairs): all pairs of 64 samples on 500
# problems would be a million set intersections of long solutions per evaluation
MAX_SIM_RESPONSES = 16


def answer_entropy(answers: Sequence[Optional[str]]) -> float:
    """Entropy (nats) of the empirical distribution of final answers; None is one outcome of its own."""
    counts = Counter(answers)
    n = len(answers)
    return -sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0


def distinct_answers(answers: Sequence[Optional[str]]) -> int:
    return len({a for a in answers if a is not None})


def word_ngrams(text: str, n: int = NGRAM) -> list[tuple[str, ...]]:
    words = text.split()
    if not words:
        return []
    if len(words) < n:
        return [tuple(words)]
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_ngram_ratio(texts: Sequence[str], n: int = NGRAM) -> Optional[float]:
    grams = [g for t in texts for g in word_ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else None


def pairwise_similarity(texts: Sequence[str], n: int = NGRAM) -> Optional[float]:
    sets = [set(word_ngrams(t, n)) for t in texts[:MAX_SIM_RESPONSES]]
    sims = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in combinations(sets, 2)]
    return sum(sims) / len(sims) if sims else None


def diversity_metrics(groups: Sequence[tuple[Sequence[str], Sequence[bool]]],
                      final_answer: Callable[[str], Optional[str]], n: int = NGRAM) -> dict[str, float]:
    """The metrics above averaged over `groups`, each (response texts, correct verdicts) of one prompt."""
    ent, dist, ratio, sim = [], [], [], []
    for texts, correct in groups:
        answers = [final_answer(t) for t in texts]
        ent.append(answer_entropy(answers))
        dist.append(distinct_answers(answers))
        right = [t for t, ok in zip(texts, correct) if ok]
        if len(right) >= 2:
            r, s = distinct_ngram_ratio(right, n), pairwise_similarity(right, n)
            if r is not None and s is not None:
                ratio.append(r)
                sim.append(s)
    if not ent:
        return {}
    out = {"answer_entropy": sum(ent) / len(ent), "distinct_answers": sum(dist) / len(dist),
           "correct_groups": float(len(ratio))}
    if ratio:
        out[f"correct_distinct_{n}gram"] = sum(ratio) / len(ratio)
        out["correct_pairwise_sim"] = sum(sim) / len(sim)
    return out


def rollout_diversity(batch, task) -> dict[str, float]:
    """`diversity/...` of a step's rollouts (a RolloutBatch), grouped by prompt."""
    texts: dict[int, list[str]] = {}
    verdicts: dict[int, list[bool]] = {}
    correct = batch.correct if batch.correct is not None else batch.rewards > 0.5
    for i in range(len(batch)):
        p, r = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        ids = [t for t in batch.tokens[i, p : p + r].tolist() if t < task.tokenizer.vocab_size]
        g = int(batch.group_ids[i])
        texts.setdefault(g, []).append(task.response_text(ids))
        verdicts.setdefault(g, []).append(bool(correct[i]))
    m = diversity_metrics([(texts[g], verdicts[g]) for g in texts], task.final_answer)
    return {f"diversity/{k}": v for k, v in m.items()}
