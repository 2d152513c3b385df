"""Data stage: the built-in synthetic verifiable task, shift ciphers (the package docstring describes the design).

Query "xyz:" (three letters of `ALPHABET`); a response "k" + "x'y'z'" names a shift k and writes the query with
every letter moved k places forward (cyclically). It is correct when k is one of the task's allowed shifts
(1..answers_per_query) and the letters match; the allowed shift used is the response's mode. Shift 0 (copying) and
shifts above answers_per_query are the task's wrong strategies, which the warm start also teaches.
"""

from __future__ import annotations

import random
import re

from typing import TYPE_CHECKING

from megatron_rlvr.tasks.base import Example, Task, zipf_weights
from megatron_rlvr.tasks.tokenizer import CharTokenizer

if TYPE_CHECKING:
    from megatron_rlvr.config import SyntheticTaskConfig

ALPHABET = "abcdefgh"  # small, so adding a shift to a letter is an 8 x 8 table a tiny model learns fast
QUERY_LEN = 3
MAX_SHIFT = len(ALPHABET) - 1
ZIPF_EXPONENT = 1.0  # warm-start weight of the r-th most likely mode ~ 1/r (4 modes: 0.48, 0.24, 0.16, 0.12)
DIFFICULTY_SPREAD = 0.75  # a family's share of incorrect warm-start answers is incorrect_fraction * U(1 +- spread)
_RESPONSE = re.compile(rf"([0-9])([{ALPHABET}]{{{QUERY_LEN}}})")


def shift_text(s: str, k: int) -> str:
    """`s` with every letter moved `k` places forward in ALPHABET, cyclically."""
    return "".join(ALPHABET[(ALPHABET.index(c) + k) % len(ALPHABET)] for c in s)


def wrong_answer(query: str, shifts: list[int], wrong_shifts: list[int], rng: random.Random) -> str:
    """An incorrect response: 70% a wrong strategy (a disallowed shift, carried out correctly), else a slip (an
    allowed shift with one letter off)."""
    if rng.random() < 0.7:
        k = rng.choice(wrong_shifts)
        return f"{k}{shift_text(query, k)}"
    k = rng.choice(shifts)
    letters = list(shift_text(query, k))
    i = rng.randrange(QUERY_LEN)
    letters[i] = shift_text(letters[i], rng.randrange(1, len(ALPHABET)))
    return f"{k}{''.join(letters)}"


class ShiftCipherTask(Task):
    """`num_queries` three-letter queries, each with exactly `answers_per_query` correct answers (modes)."""

    name = "synthetic"
    # Warm-start quality gate (megatron_rlvr.run.warm_start), in nats per response token on held-out examples. Measured
    # over init seeds 0-7 on CPU and an H200 (bf16 and fp32): converged policies 0.472-0.477, memory models
    # 0.496-0.640; stuck starts (the old constant 3e-3 schedule) 1.0-1.2.
    warm_start_max_loss = 0.7

    def __init__(self, num_queries: int = 64, answers_per_query: int = 4, seed: int = 0):
        if not 1 <= answers_per_query <= MAX_SHIFT - 1:
            raise ValueError(
                f"task.synthetic.answers_per_query={answers_per_query}: the synthetic task allows shifts 1..k and "
                f"keeps at least one non-zero wrong shift; fix: use 1..{MAX_SHIFT - 1} (default 4)"
            )
        n_possible = len(ALPHABET) ** QUERY_LEN
        if not 1 <= num_queries <= n_possible:
            raise ValueError(f"task.synthetic.num_queries={num_queries}: must be in [1, {n_possible}] (distinct "
                             "three-letter queries); fix: use e.g. 64")
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
        return wrong_answer(example.metadata["query"], self.shifts, self.wrong_shifts, rng)

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


COUPLED_ZIPF_EXPONENT = 1.5  # steeper prior than the default task: 4 modes get 0.60, 0.21, 0.12, 0.07
EXCEPTION_FRACTION = 0.25  # share of queries whose family habit is NOT an allowed shift
HABIT_SHARE = 0.35  # how often the warm start answers an exception query with its family's (wrong) habit


class CoupledShiftCipherTask(ShiftCipherTask):
    """Variant `synthetic_coupled`: the shift cipher with per-query answer sets and family habits, built so that the
    paper's collapse mechanism can act (sampling bias + semantic coupling, its section 3.3).

    Every family (first letter) has a *habit*, one shift in 1..7, and a preference order over all shifts. Each query
    allows its own `answers_per_query` shifts out of 1..7 (its modes, labelled 0..K-1 in increasing shift order):
    - regular queries (75%) allow the habit; the warm start favours their allowed shifts by the family's order with
      a steep Zipf law (exponent 1.5), so the habit dominates and the tail modes are rarely sampled in a group of 8;
    - exception queries (25%) do not allow the habit, yet the warm start answers them with it 35% of the time (the
      family's reflex, wrong here) and spreads the rest over their allowed shifts in the family's order.
    Reinforcing the habit on the regular queries of a family pushes it up on the family's exceptions too (shared
    parameters, near-identical inputs), where it is wrong, while the rare correct modes everywhere are the ones a
    finite group fails to sample: the setting in which GRPO should lose modes and PASS@k for large k, while AVG@k
    still rises. Prompts are ordered round-robin over families, so the first `eval.num_prompts` cover every family.
    """

    name = "synthetic_coupled"

    def __init__(self, num_queries: int = 64, answers_per_query: int = 4, seed: int = 0):
        if not 1 <= answers_per_query <= MAX_SHIFT - 2:
            raise ValueError(
                f"task.synthetic.answers_per_query={answers_per_query}: the coupled task draws each query's shifts "
                f"from 1..7 without the family habit and keeps a wrong non-zero shift; fix: use 1..{MAX_SHIFT - 2} "
                "(e.g. 4)")
        super().__init__(num_queries, 1, seed)  # the queries themselves; answers are re-drawn below
        self.answers_per_query = answers_per_query
        rng = random.Random(f"shift-cipher-coupled:{seed}")
        nonzero = list(range(1, MAX_SHIFT + 1))
        family_order = {f: rng.sample(nonzero, len(nonzero)) for f in ALPHABET}  # preference order over shifts
        habit = {f: order[0] for f, order in family_order.items()}
        difficulty = {f: rng.uniform(1 - DIFFICULTY_SPREAD, 1 + DIFFICULTY_SPREAD) for f in ALPHABET}
        weights = zipf_weights(answers_per_query, COUPLED_ZIPF_EXPONENT)
        by_family: dict[str, list[Example]] = {f: [] for f in ALPHABET}
        for ex in self.prompts:  # sorted by query, so the per-family draws are reproducible
            q = ex.metadata["query"]
            f = q[0]
            exception = rng.random() < EXCEPTION_FRACTION
            others = [k for k in nonzero if k != habit[f]]
            allowed = set(rng.sample(others, answers_per_query if exception else answers_per_query - 1))
            if not exception:
                allowed.add(habit[f])
            shifts = sorted(allowed)
            preferred = [k for k in family_order[f] if k in allowed]
            by_family[f].append(Example(
                index=0, prompt=ex.prompt, prompt_ids=ex.prompt_ids,
                metadata={
                    "query": q, "shifts": shifts, "answers": [f"{k}{shift_text(q, k)}" for k in shifts],
                    "mode_weights": [weights[preferred.index(k)] for k in shifts], "family": f,
                    "difficulty": difficulty[f], "habit": habit[f], "exception": exception,
                },
            ))
        ordered: list[Example] = []
        while any(by_family.values()):
            for f in ALPHABET:
                if by_family[f]:
                    ordered.append(by_family[f].pop(0))
        self.prompts = [Example(index=i, prompt=e.prompt, prompt_ids=e.prompt_ids, metadata=e.metadata)
                        for i, e in enumerate(ordered)]
        self.shifts = self.wrong_shifts = []  # per query here: see metadata["shifts"]

    def describe_response(self, example: Example, response_text: str) -> str:
        """'mode i', 'habit k' (the family habit on an exception), 'wrong shift k', 'slip' or 'malformed'."""
        m = _RESPONSE.fullmatch(response_text.strip())
        if m is None:
            return "malformed"
        k, letters = int(m.group(1)), m.group(2)
        if letters != shift_text(example.metadata["query"], k):
            return "slip"
        shifts = example.metadata["shifts"]
        if k in shifts:
            return f"mode {shifts.index(k)}"
        return f"habit {k}" if k == example.metadata["habit"] else f"wrong shift {k}"

    def incorrect_answer_text(self, example: Example, rng: random.Random) -> str:
        shifts = example.metadata["shifts"]
        wrong = [k for k in range(MAX_SHIFT + 1) if k not in shifts]
        return wrong_answer(example.metadata["query"], shifts, wrong, rng)

    def warm_start_examples(
        self, n: int, incorrect_fraction: float, rng: random.Random
    ) -> list[tuple[list[int], list[int]]]:
        if not 0 <= incorrect_fraction < 1:
            raise ValueError(f"incorrect_fraction={incorrect_fraction}: must be in [0, 1); fix: use e.g. 0.3")
        out = []
        for _ in range(n):
            ex = rng.choice(self.prompts)
            md = ex.metadata
            if md["exception"] and rng.random() < HABIT_SHARE:
                text = f"{md['habit']}{shift_text(md['query'], md['habit'])}"
            elif rng.random() < min(0.95, incorrect_fraction * md["difficulty"]):
                text = self.incorrect_answer_text(ex, rng)
            else:
                mode = rng.choices(range(self.num_modes(ex)), weights=md["mode_weights"])[0]
                text = md["answers"][mode]
            out.append((list(ex.prompt_ids), self.tokenizer.encode(text, add_eos=True)))
        return out


# Registered task factories (megatron_rlvr.registry.TASKS): both read the task.synthetic section and task.seed; the
# other arguments of the factory contract (prompt budget, eval-set path/keys/limit, tokenizer) are the math task's.
def build_shift_cipher(cfg: "SyntheticTaskConfig", *, seed: int, **_) -> ShiftCipherTask:
    return ShiftCipherTask(cfg.num_queries, cfg.answers_per_query, seed)


def build_coupled_shift_cipher(cfg: "SyntheticTaskConfig", *, seed: int, **_) -> CoupledShiftCipherTask:
    return CoupledShiftCipherTask(cfg.num_queries, cfg.answers_per_query, seed)
