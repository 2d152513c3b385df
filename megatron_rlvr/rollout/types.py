"""Rollout stage: the data contract between rollout engines, rewards and the trainer.

Every engine (embedded, SGLang) implements `RolloutEngine` (declared in `rollout/engine.py`); the trainer consumes
`Generation` records and packs them into a `RolloutBatch` for the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch


@dataclass
class SamplingParams:
    """Per-request sampling options; DLC's lambda and tau travel with them."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # DLC balance factor: sample from softmax((z_policy - lam * z_memory) / T); 0 = plain policy sampling
    lam: float = 0.0
    # optional plausibility constraint (docs/ALGORITHMS.md, "DLC")
    tau: Optional[float] = None
    # base seed; the engine derives a per-sequence seed and uses the decode position as the RNG offset
    seed: int = 0
    # global index of this call's first request: request i of the call draws from the stream of request
    # seed_offset + i, so a step's sequences do not depend on how its prompts were sharded over engines
    seed_offset: int = 0
    # token ids that end a response
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class Generation:
    """One response to one prompt."""

    prompt_ids: list[int]
    response_ids: list[int]
    # log pi_cal(y_t | ctx) of each response token (the distribution actually sampled from)
    logprob_cal: list[float]
    # log pi_theta(y_t | ctx) at the same temperature, from the rollout engine
    logprob_policy: list[float]
    # "stop" (EOS / stop token) or "length" (hit max_new_tokens)
    finish_reason: str
    # entropy of pi_cal at each step (optional, for metrics)
    entropy_cal: Optional[list[float]] = None


@dataclass
class RolloutBatch:
    """A step's rollouts packed for the update. N sequences, right-padded to length L = prompt + response."""

    tokens: torch.Tensor  # (N, L) int64, prompt then response, padded with pad_id
    prompt_lens: torch.Tensor  # (N,) int64
    response_lens: torch.Tensor  # (N,) int64
    response_mask: torch.Tensor  # (N, L) bool; True at positions whose token is a response token
    logprob_cal: torch.Tensor  # (N, L) float32, aligned with tokens (0 where not a response token)
    logprob_rollout_policy: torch.Tensor  # (N, L) float32
    rewards: torch.Tensor  # (N,) float32 (after shaping)
    group_ids: torch.Tensor  # (N,) int64: responses to the same prompt share a group id
    finish_reasons: list[str] = field(default_factory=list)
    # which correct answer (mode) each response hit; -1 for incorrect (used by mode-coverage metrics)
    modes: Optional[torch.Tensor] = None
    advantages: Optional[torch.Tensor] = None  # (N,) filled by the advantage stage
    # verifier verdict before reward shaping (AVG@G / PASS@G count these); None = rewards > 0.5
    correct: Optional[torch.Tensor] = None
    # rollout-stage statistics (DAPO rounds, kept-group share, ...) for the metrics stage
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, idx: torch.Tensor) -> "RolloutBatch":
        """Rows `idx` of the batch (for dynamic sampling and micro-batching)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        ids = idx.tolist()
        return RolloutBatch(
            tokens=self.tokens[idx], prompt_lens=self.prompt_lens[idx], response_lens=self.response_lens[idx],
            response_mask=self.response_mask[idx], logprob_cal=self.logprob_cal[idx],
            logprob_rollout_policy=self.logprob_rollout_policy[idx], rewards=self.rewards[idx],
            group_ids=self.group_ids[idx], finish_reasons=[self.finish_reasons[i] for i in ids],
            modes=pick(self.modes), advantages=pick(self.advantages), correct=pick(self.correct),
            stats=dict(self.stats),
        )

    def save(self, path) -> None:
        torch.save(self.__dict__, path)

    @classmethod
    def load(cls, path) -> "RolloutBatch":
        return cls(**torch.load(path, weights_only=False))


def pack_generations(
    gens: Sequence[Generation], rewards: Sequence[float], group_ids: Sequence[int], pad_id: int,
    modes: Optional[Sequence[int]] = None,
) -> RolloutBatch:
    """Right-pad generations into a `RolloutBatch`; log-probs are placed at their response-token positions."""
    n = len(gens)
    lengths = [len(g.prompt_ids) + len(g.response_ids) for g in gens]
    L = max(lengths)
    tokens = torch.full((n, L), pad_id, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.bool)
    lp_cal = torch.zeros((n, L), dtype=torch.float32)
    lp_pol = torch.zeros((n, L), dtype=torch.float32)
    for i, g in enumerate(gens):
        p, r = len(g.prompt_ids), len(g.response_ids)
        tokens[i, : p + r] = torch.tensor(list(g.prompt_ids) + list(g.response_ids), dtype=torch.long)
        mask[i, p : p + r] = True
        lp_cal[i, p : p + r] = torch.tensor(g.logprob_cal, dtype=torch.float32)
        lp_pol[i, p : p + r] = torch.tensor(g.logprob_policy, dtype=torch.float32)
    return RolloutBatch(
        tokens=tokens,
        prompt_lens=torch.tensor([len(g.prompt_ids) for g in gens], dtype=torch.long),
        response_lens=torch.tensor([len(g.response_ids) for g in gens], dtype=torch.long),
        response_mask=mask, logprob_cal=lp_cal, logprob_rollout_policy=lp_pol,
        rewards=torch.tensor(list(rewards), dtype=torch.float32),
        group_ids=torch.tensor(list(group_ids), dtype=torch.long),
        finish_reasons=[g.finish_reason for g in gens],
        modes=None if modes is None else torch.tensor(list(modes), dtype=torch.long),
    )
