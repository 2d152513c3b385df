"""Toy over-sharpening study, simulation stage: a linear softmax policy over {Cat, Dog, Persian, Siamese}
trained with RLVR on Persian inputs (paper section 3.4, appendices I and J), many seeds at once.

Every seed is an independent run; the seed axis is a leading tensor dimension, so one optimizer step
advances all runs together. Advantages (every estimator, IAC) and the policy loss come from
`megatron_rlvr.advantage` and `megatron_rlvr.update.losses`, the same functions the Megatron trainer calls: each
seed's G samples form one group (one query) and one whitening batch, and each sample is a one-token response.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from megatron_rlvr.advantage import compute_advantages
from megatron_rlvr.update.losses import policy_loss, tis_weights

LABELS = ("Cat", "Dog", "Persian", "Siamese")
CAT, DOG, PERSIAN, SIAMESE = range(4)
# reward 1 for the superclass or the subclass: both are correct answers for a Persian input
CORRECT_FOR_PERSIAN = (CAT, PERSIAN)
CORRECT_FOR_SIAMESE = (CAT, SIAMESE)

# Feature axes: 0 = feline (shared by every cat), 1 = Persian-specific, 2 = canine, 3 = Siamese-specific.
# Persian and Siamese share the Cat direction and differ in their subclass dimensions; the Siamese variants
# move mass from the Persian-specific axis 1 to the Siamese-specific axis 3 (paper section 3.4). All inputs
# are unit vectors, so the learning rate means the same for each and the coupling of a Siamese input to
# the Persian training input is exactly their cosine.
_RAW_EMBEDDINGS = {
    "Cat": (1.0, 0.0, 0.0, 0.0),
    "Dog": (0.0, 0.0, 1.0, 0.0),
    "Persian": (1.0, 1.0, 0.0, 0.0),
    "Siamese-high": (1.0, 0.8, 0.0, 0.2),
    "Siamese-mid": (1.0, 0.5, 0.0, 0.5),
    "Siamese-low": (1.0, 0.2, 0.0, 0.8),
}
SIAMESE_VARIANTS = ("Siamese-high", "Siamese-mid", "Siamese-low")


def embedding(name: str) -> Tensor:
    v = torch.tensor(_RAW_EMBEDDINGS[name], dtype=torch.float64)
    return v / v.norm()


OPTIMIZERS = ("sgd", "momentum", "adamw")
# learning rates per optimizer, chosen once (see README) and shared by every figure
DEFAULT_LR = {"sgd": 4.0, "momentum": 4.0, "adamw": 0.3}
COLLAPSE_THRESHOLD = 0.01


@dataclass(frozen=True)
class ToyConfig:
    """One setting of the study; `seeds` independent runs of `steps` RLVR steps each."""

    estimator: str = "grpo"
    """advantage estimator, one of megatron_rlvr.advantage.ESTIMATORS"""
    group_size: int = 8
    """G: labels sampled per step (one query, the Persian input)"""
    optimizer: str = "sgd"
    """sgd | momentum (SGD, momentum 0.9) | adamw (betas 0.9/0.999, weight decay 0.01)"""
    lr: float | None = None
    """policy learning rate; None takes DEFAULT_LR[optimizer]"""
    iac_alpha: float = 0.0
    """IAC strength (0 = off)"""
    dlc_lambda: float = 0.0
    """DLC balance factor lambda (0 = off): sample from softmax(z - lambda * z_mem)"""
    memory_lr: float | None = None
    """learning rate of the memory softmax (same optimizer family as the policy); None = policy lr"""
    tis_cap: float = 0.0
    """> 0: weight each sample by min(pi / pi_cal, tis_cap) (docs/ALGORITHMS.md, "DLC"; not in the paper)"""
    steps: int = 500
    seeds: int = 24
    seed: int = 0

    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def label(self) -> str:
        parts = [self.estimator, f"G={self.group_size}", self.optimizer]
        if self.iac_alpha:
            parts.append(f"IAC(a={self.iac_alpha:g})")
        if self.dlc_lambda:
            parts.append(f"DLC(l={self.dlc_lambda:g})")
        if self.tis_cap:
            parts.append(f"TIS(C={self.tis_cap:g})")
        return " ".join(parts)


@dataclass
class ToyResult:
    config: ToyConfig
    persian_probs: Tensor  # (steps + 1, seeds, 4): policy on the Persian training input, before each step
    siamese_probs: dict[str, Tensor] = field(default_factory=dict)  # variant -> (steps + 1, seeds, 4)

    @property
    def minority_correct(self) -> Tensor:
        """(steps + 1, seeds) probability of the less likely of the two correct labels, Cat and Persian."""
        p = self.persian_probs
        return torch.minimum(p[..., CAT], p[..., PERSIAN])

    def collapse_steps(self, threshold: float = COLLAPSE_THRESHOLD) -> Tensor:
        """(seeds,) step from which the minority correct label stays below `threshold` to the end; -1 if never.

        "Stays" matters only with DLC: its memory can revive a label after a brief dip below the threshold,
        and a dip that is undone is not a collapse. Without DLC a suppressed label does not come back.
        """
        below = self.minority_correct < threshold  # (steps + 1, seeds)
        # below from t to the end <=> the reversed cumulative product of `below` is 1 at t
        stays = below.flip(0).to(torch.int64).cumprod(0).flip(0).bool()
        first = torch.argmax(stays.to(torch.int8), dim=0)
        return torch.where(stays[-1], first, torch.full_like(first, -1))

    def first_dip_steps(self, threshold: float = COLLAPSE_THRESHOLD) -> Tensor:
        """(seeds,) first step at which the minority correct label is below `threshold`; -1 if never."""
        below = self.minority_correct < threshold
        first = torch.argmax(below.to(torch.int8), dim=0)
        return torch.where(below.any(dim=0), first, torch.full_like(first, -1))


def _make_optimizer(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def run_toy(cfg: ToyConfig) -> ToyResult:
    """Train `cfg.seeds` independent linear softmax policies on the Persian input and record their probabilities."""
    if cfg.group_size < 2 and cfg.estimator != "raw":
        raise ValueError(f"group_size must be >= 2 for estimator {cfg.estimator!r}, got {cfg.group_size}")
    if cfg.dlc_lambda < 0:
        raise ValueError(f"dlc_lambda must be >= 0, got {cfg.dlc_lambda}")
    gen = torch.Generator().manual_seed(cfg.seed)
    S, G = cfg.seeds, cfg.group_size
    x = embedding("Persian")  # (d,)
    d = x.numel()
    siamese_x = {name: embedding(name) for name in SIAMESE_VARIANTS}

    # W = 0: the initial policy is uniform, so Cat and Persian start exactly tied and only sampling noise
    # decides which one wins (the paper: "driven randomly by early sampling noise")
    W = torch.zeros(S, 4, d, dtype=torch.float64, requires_grad=True)
    opt = _make_optimizer(cfg.optimizer, [W], cfg.resolved_lr())
    use_dlc = cfg.dlc_lambda > 0
    if use_dlc:
        U = torch.zeros(S, 4, d, dtype=torch.float64, requires_grad=True)  # memory softmax, uniform at start
        mem_lr = cfg.resolved_lr() if cfg.memory_lr is None else cfg.memory_lr
        mem_opt = _make_optimizer(cfg.optimizer, [U], mem_lr)

    correct = torch.zeros(4, dtype=torch.bool)
    correct[list(CORRECT_FOR_PERSIAN)] = True
    group_ids = torch.arange(S).repeat_interleave(G)  # (S*G,): seed s's samples are one group and one batch
    ones_mask = torch.ones(S * G, 1, dtype=torch.bool)

    persian = torch.empty(cfg.steps + 1, S, 4, dtype=torch.float64)
    siamese = {name: torch.empty(cfg.steps + 1, S, 4, dtype=torch.float64) for name in SIAMESE_VARIANTS}

    def record(t: int) -> None:
        with torch.no_grad():
            persian[t] = torch.softmax(W @ x, dim=-1)
            for name, xs in siamese_x.items():
                siamese[name][t] = torch.softmax(W @ xs, dim=-1)

    for step in range(cfg.steps):
        record(step)
        logits = W @ x  # (S, 4)
        logp = torch.log_softmax(logits, dim=-1)
        with torch.no_grad():
            sample_logits = logits - cfg.dlc_lambda * (U @ x) if use_dlc else logits
            cal_logp = torch.log_softmax(sample_logits, dim=-1)
            y = torch.multinomial(cal_logp.exp(), G, replacement=True, generator=gen)  # (S, G)
        rewards = correct[y].to(torch.float64).reshape(-1)
        adv, _ = compute_advantages(rewards, group_ids, cfg.estimator, iac_alpha=cfg.iac_alpha, batch_ids=group_ids)
        token_logp = logp.gather(1, y).reshape(S * G, 1)  # each sample is a one-token response
        # token-mean over all S*G samples times S = sum over seeds of each seed's mean over its G samples,
        # so every seed's gradient is exactly its own REINFORCE gradient
        tis = None
        if cfg.tis_cap > 0:
            tis = tis_weights(token_logp.detach(), cal_logp.gather(1, y).reshape(S * G, 1), cfg.tis_cap)
        loss, _ = policy_loss(token_logp, token_logp.detach(), adv, ones_mask, loss_agg="token-mean", tis_weights=tis)
        opt.zero_grad(set_to_none=True)
        (loss * S).backward()
        opt.step()
        if use_dlc:
            # DLC memory update: cross-entropy on this step's sampled labels, so exp(z_mem) tracks the
            # empirical rollout distribution (docs/ALGORITHMS.md, "DLC")
            mem_logp = torch.log_softmax(U @ x, dim=-1)
            mem_loss = -mem_logp.gather(1, y).mean(dim=1).sum()
            mem_opt.zero_grad(set_to_none=True)
            mem_loss.backward()
            mem_opt.step()
    record(cfg.steps)
    return ToyResult(config=cfg, persian_probs=persian, siamese_probs=siamese)


def summarize(result: ToyResult, threshold: float = COLLAPSE_THRESHOLD) -> dict:
    """Collapse statistics of one setting: step at which the minority correct label falls below `threshold`."""
    steps = result.collapse_steps(threshold)
    collapsed = steps[steps >= 0].to(torch.float64)
    n = int(steps.numel())
    never = n - int(collapsed.numel())
    # runs that never collapse count as +inf, so the median is only defined when most runs collapse
    padded = torch.cat([collapsed, torch.full((never,), math.inf, dtype=torch.float64)])
    q = torch.quantile(
        padded.clamp(max=1e9), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), interpolation="nearest"
    )
    final = result.persian_probs[-1]
    cfg = result.config

    def finite(v: float) -> float | None:
        return float(v) if v < 1e9 else None

    return {
        "label": cfg.label(),
        "estimator": cfg.estimator,
        "group_size": cfg.group_size,
        "optimizer": cfg.optimizer,
        "lr": cfg.resolved_lr(),
        "iac_alpha": cfg.iac_alpha,
        "dlc_lambda": cfg.dlc_lambda,
        "steps": cfg.steps,
        "seeds": n,
        "collapsed": n - never,
        "never_collapsed": never,
        "collapse_step_median": finite(q[1]),
        "collapse_step_q25": finite(q[0]),
        "collapse_step_q75": finite(q[2]),
        "collapse_step_min": float(collapsed.min()) if collapsed.numel() else None,
        "collapse_step_max": float(collapsed.max()) if collapsed.numel() else None,
        "dipped_below_threshold": int((result.first_dip_steps(threshold) >= 0).sum()),
        "collapsed_onto_cat": int(((steps >= 0) & (final[:, CAT] > final[:, PERSIAN])).sum()),
        "final_minority_correct_median": float(result.minority_correct[-1].median()),
        "final_correct_mass_median": float((final[:, CAT] + final[:, PERSIAN]).median()),
    }
