"""Data stage: the interface every task implements, and the resumable prompt sampler.

A `Task` owns a tokenizer, a fixed list of prompts (`Example`s) and a verifier. `score()` turns a response into a
reward and the index of the correct answer (mode) it hit, -1 when incorrect; `warm_start_examples()` draws the
supervised data of the warm start: correct answers with a skewed (Zipf) weight over modes, plus incorrect ones.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from megatron_rlvr.tasks.tokenizer import Tokenizer


@dataclass(frozen=True)
class Example:
    """One prompt of a task. `metadata` holds what the verifier needs (answers, source file/line, ...)."""

    index: int
    prompt: str
    prompt_ids: list[int]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)


def zipf_weights(n: int, exponent: float = 1.0) -> list[float]:
    """Normalised weights proportional to 1 / rank^exponent for ranks 1..n."""
    raw = [1.0 / (r ** exponent) for r in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


class Task(ABC):
    """A verifiable task: prompts, tokenizer, verifier and warm-start data."""

    name: str
    tokenizer: Tokenizer
    prompts: list[Example]

    def score(self, example: Example, response_ids: Sequence[int]) -> tuple[float, int]:
        """(reward, mode) of a generated response; tokens from the first EOS on are ignored."""
        return self.score_text(example, self.response_text(response_ids))

    @abstractmethod
    def score_text(self, example: Example, response_text: str) -> tuple[float, int]:
        """(reward, mode) of a response text: reward 1.0 and the mode index when correct, (0.0, -1) otherwise."""

    def response_text(self, response_ids: Sequence[int]) -> str:
        """The decoded response up to (not including) its first EOS."""
        ids = list(response_ids)
        eos = self.tokenizer.eos_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.tokenizer.decode(ids)

    def score_texts(self, examples: Sequence[Example], texts: Sequence[str]) -> list[tuple[float, int]]:
        """`score_text` of many responses; tasks with an expensive verifier run them in parallel."""
        return [self.score_text(ex, t) for ex, t in zip(examples, texts)]

    def score_many(self, examples: Sequence[Example], responses: Sequence[Sequence[int]]) -> list[tuple[float, int]]:
        """`score` of many responses in one call (parallel where the task's verifier is). A response holding ids
        beyond the tokenizer (a model's padded vocabulary, as Qwen3's 151936 rows vs its tokenizer's 151669
        tokens) is simply incorrect."""
        vocab = getattr(self.tokenizer, "vocab_size", None)
        ok = [vocab is None or all(int(t) < vocab for t in r) for r in responses]
        todo = [i for i, good in enumerate(ok) if good]
        scored = self.score_texts([examples[i] for i in todo], [self.response_text(responses[i]) for i in todo])
        out = [(0.0, -1)] * len(responses)
        for i, sc in zip(todo, scored):
            out[i] = sc
        return out

    def final_answer(self, response_text: str) -> Optional[str]:
        """The response's final answer as a comparable string (None: it gives none); diversity metrics count these."""
        text = response_text.strip()
        return text or None

    def pop_stats(self) -> dict[str, float]:
        """Verifier statistics accumulated since the last call (timeouts, errors, ...); none by default."""
        return {}

    @abstractmethod
    def num_modes(self, example: Example) -> int:
        """How many distinct correct answers (modes) `example` has."""

    @abstractmethod
    def warm_start_examples(
        self, n: int, incorrect_fraction: float, rng: random.Random
    ) -> list[tuple[list[int], list[int]]]:
        """`n` supervised pairs (prompt_ids, response_ids ending in EOS): a share `incorrect_fraction` of incorrect
        answers, the rest correct with modes weighted unevenly (so the warm-started policy has several modes at
        different probabilities)."""

    def __len__(self) -> int:
        return len(self.prompts)


class PromptSampler:
    """Deterministic, resumable order over a task's prompts: a fresh seeded permutation per epoch.

    The whole state is `{"seed", "epoch", "position", "num_prompts"}`, so a checkpoint stores it as a small dict
    and a resumed run draws exactly the prompts the uninterrupted run would have drawn.
    """

    def __init__(self, task: Task | Sequence[Example], seed: int):
        self.examples: list[Example] = list(task.prompts if isinstance(task, Task) else task)
        if not self.examples:
            raise ValueError("PromptSampler got a task with no prompts; fix: check the task's dataset")
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        # string seeds hash with SHA-512 in CPython's random, so the order is stable across Python versions
        order = list(range(len(self.examples)))
        random.Random(f"prompt-sampler:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[Example]:
        """The next `n` prompts; an epoch boundary inside the batch continues with the next epoch's order."""
        if n < 0:
            raise ValueError(f"PromptSampler.next_batch(n={n}): n must be >= 0")
        out = []
        while len(out) < n:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(out), len(self._order) - self.position)
            out.extend(self.examples[i] for i in self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_prompts": len(self.examples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"seed", "epoch", "position", "num_prompts"} - set(state)
        if missing:
            raise ValueError(f"PromptSampler state lacks {sorted(missing)}; fix: pass a dict from state_dict()")
        if int(state["num_prompts"]) != len(self.examples):
            raise ValueError(
                f"PromptSampler state was saved for {state['num_prompts']} prompts but the task has "
                f"{len(self.examples)}; fix: resume with the same task config (dataset, num_queries) as the run"
            )
        if not 0 <= int(state["position"]) <= len(self.examples):
            raise ValueError(f"PromptSampler state position {state['position']} is outside "
                             f"[0, {len(self.examples)}]; fix: pass a dict from state_dict()")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
