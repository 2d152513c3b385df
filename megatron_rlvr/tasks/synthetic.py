"""Data stage: the built-in synthetic verifiable task, shift ciphers (the package docstring describes the design).

Query "xyz:" (three letters of `ALPHABET`); a response "k" + "x'y'z'" names a shift k and writes the query with
every letter moved k places forward (cyclically). It is correct when k is one of the task's allowed shifts
(1..answers_per_query) and the letters match; the allowed shift used is the response's mode. Shift 0 (copying) and
shifts above answers_per_query are the task's wrong strategies, which the warm start also teaches.
"""

from __future__ import annotations

import random
import re

from megatron_rlvr.tasks.base import Example, Task, zipf_weights
from megatron_rlvr.tasks.tokenizer import CharTokenizer

ALPHABET = "abcdefgh"  # small, so adding a shift to a letter is an 8 x 8 table a tiny model learns fast
QUERY_LEN = 3
MAX_SHIFT = len(ALPHABET) - 1
ZIPF_EXPONENT = 1.0  # warm-start weight of the r-th most likely mode ~ 1/r (4 modes: 0.48, 0.24, 0.16, 0.12)
DIFFICULTY_SPREAD = 0.75  # a family's share of incorrect warm-start answers is incorrect_fraction * U(1 +- spread)
_RESPONSE = re.compile(rf"([0-9])([{ALPHABET}]{{{QUERY_LEN}}})")


def shift_text(s: str, k: int) -> str:
    """`s` with every letter moved `k` places forward in ALPHABET, cyclically."""
    return "".join(ALPHABET[(ALPHABET.index(c) + k) % len(ALPHABET)] for c in s)


class ShiftCipherTask(Task):
    """`num_queries` three-letter queries, each with exactly `answers_per_query` correct answers (modes)."""

    name = "synthetic"
    # Warm-start quality gate (megatron_rlvr.warm_start), in nats per response token on held-out examples. Measured
    # over init seeds 0-7 on CPU and an H200 (bf16 and fp32): converged policies 0.472-0.477, memory models
    # 0.496-0.640; stuck starts (the old constant 3e-3 schedule) 1.0-1.2.
    warm_start_max_loss = 0.7

    def __init__(self, num_queries: int = 64, answers_per_query: int = 4, seed: int = 0):
        if not 1 <= answers_per_query <= MAX_SHIFT - 1:
            raise ValueError(
                f"task.answers_per_query={answers_per_query}: the synthetic task allows shifts 1..k and keeps at "
                f"least one non-zero wrong shift; fix: use 1..{MAX_SHIFT - 1} (default 4)"
            )
        n_possible = len(ALPHABET) ** QUERY_LEN
        if not 1 <= num_queries <= n_possible:
            raise ValueError(f"task.num_queries={num_queries}: must be in [1, {n_possible}] (distinct three-letter "
                             "queries); fix: use e.g. 64")
        self.tokenizer = CharTokenizer()
        self.answers_per_query = answers_per_query
        self.shifts = list(range(1, answers_per_query + 1))
        self.wrong_shifts = [0] + list(range(answers_per_query + 1, MAX_SHIFT + 1))
        rng = random.Random(f"shift-cipher:{seed}")
        queries: set[str] = set()
        while len(queries) < num_queries:
            queries.add("".join(rng.choice(ALPHABET) for _ in range(QUERY_LEN)))
        weights = zipf_weights(answers_per_query, ZIPF_EXPONENT)
        # A query's family is its first letter. The family fixes which shift dominates the warm start and how often
        # the warm start answers wrongly, so related queries share structure (the paper's semantic coupling), a tiny
        # model learns the preferences quickly, and success rates differ across queries (what IAC reacts to).
        family_rank, family_difficulty = {}, {}
        for letter in ALPHABET:
            family_rank[letter] = rng.sample(range(answers_per_query), answers_per_query)
            family_difficulty[letter] = rng.uniform(1 - DIFFICULTY_SPREAD, 1 + DIFFICULTY_SPREAD)
        self.prompts = []
        for i, q in enumerate(sorted(queries)):
            text = f"{q}:"
            self.prompts.append(Example(
                index=i, prompt=text, prompt_ids=self.tokenizer.encode(text, add_bos=True),
                metadata={
                    "query": q,
                    "answers": [f"{k}{shift_text(q, k)}" for k in self.shifts],
                    "mode_weights": [weights[r] for r in family_rank[q[0]]],
                    "family": q[0],
                    "difficulty": family_difficulty[q[0]],
                },
            ))

    def num_modes(self, example: Example) -> int:
        return len(example.metadata["answers"])

    def score_text(self, example: Example, response_text: str) -> tuple[float, int]:
        answers = example.metadata["answers"]
        text = response_text.strip()
        if text in answers:
            return 1.0, answers.index(text)
        return 0.0, -1

    def describe_response(self, example: Example, response_text: str) -> str:
        """'mode k', 'wrong shift k' or 'slip' / 'malformed' (for logs and tests)."""
        m = _RESPONSE.fullmatch(response_text.strip())
        if m is None:
            return "malformed"
        k, letters = int(m.group(1)), m.group(2)
        if letters != shift_text(example.metadata["query"], k):
            return "slip"
        return f"mode {k - 1}" if k in self.shifts else f"wrong shift {k}"

    def incorrect_answer_text(self, example: Example, rng: random.Random) -> str:
        """A wrong strategy (a disallowed shift, carried out correctly) or a slip (an allowed shift, one letter
        off)."""
        q = example.metadata["query"]
        if rng.random() < 0.7:
            k = rng.choice(self.wrong_shifts)
            return f"{k}{shift_text(q, k)}"
        k = rng.choice(self.shifts)
        letters = list(shift_text(q, k))
        i = rng.randrange(QUERY_LEN)
        letters[i] = shift_text(letters[i], rng.randrange(1, len(ALPHABET)))
        return f"{k}{''.join(letters)}"

    def warm_start_examples(
        self, n: int, incorrect_fraction: float, rng: random.Random
    ) -> list[tuple[list[int], list[int]]]:
        if not 0 <= incorrect_fraction < 1:
            raise ValueError(f"incorrect_fraction={incorrect_fraction}: must be in [0, 1); fix: use e.g. 0.3")
        out = []
        for _ in range(n):
            ex = rng.choice(self.prompts)
            if rng.random() < min(0.95, incorrect_fraction * ex.metadata["difficulty"]):
                text = self.incorrect_answer_text(ex, rng)
            else:
                mode = rng.choices(range(self.num_modes(ex)), weights=ex.metadata["mode_weights"])[0]
                text = ex.metadata["answers"][mode]
            out.append((list(ex.prompt_ids), self.tokenizer.encode(text, add_eos=True)))
        return out
