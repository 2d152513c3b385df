"""Evaluation stage, rollout statistics: AVG@G, PASS@G, mode coverage, lengths and KL(pi_cal || pi_theta) of one
step's rollouts, and the coverage signals (PASS@k for k = 1, 2, 4, ..., answer entropy) of an evaluation batch.

Over-sharpening shows up as falling policy entropy and falling mode coverage (distinct correct answers per query,
the entropy over correct answers, PASS@k for k well above G) while AVG@G still rises.

`pass_at_k` here is the closed form with binomial coefficients; `eval.passk.pass_at_k` computes the same value as
a product (stable for large n). Both are kept as they are so logged numbers stay bit-identical to earlier runs.
"""

from __future__ import annotations

import math

from megatron_rlvr.rollout.types import RolloutBatch


def rollout_metrics(batch: RolloutBatch, correct_threshold: float = 0.5) -> dict[str, float]:
    """AVG@G, PASS@G, mode coverage, response lengths and KL(pi_cal || pi_theta) of one step's rollouts."""
    correct = (batch.correct if batch.correct is not None else batch.rewards > correct_threshold).float()
    groups = batch.group_ids.unique()
    pass_at, modes_per_query = [], []
    for g in groups:
        sel = batch.group_ids == g
        pass_at.append(float(correct[sel].max()))
        if batch.modes is not None:
            m = batch.modes[sel]
            modes_per_query.append(float(m[m >= 0].unique().numel()))
    mask = batch.response_mask
    n_tok = mask.sum().clamp(min=1)
    # Rollouts are drawn from pi_cal, so mean(log pi_cal - log pi_theta) over sampled tokens is an unbiased (k1)
    # estimate of KL(pi_cal || pi_theta): how far DLC moved sampling away from the policy.
    kl_cal = float(((batch.logprob_cal - batch.logprob_rollout_policy) * mask).sum() / n_tok)
    out = {
        "reward/mean": float(batch.rewards.mean()),
        "acc/avg_at_g": float(correct.mean()),
        "acc/pass_at_g": sum(pass_at) / max(len(pass_at), 1),
        "response/length_mean": float(batch.response_lens.float().mean()),
        "response/length_max": float(batch.response_lens.max()),
        "response/truncated_frac": sum(r == "length" for r in batch.finish_reasons) / max(len(batch), 1),
        "dlc/kl_cal_policy": kl_cal,
        "rollout/sequences": float(len(batch)),
        "rollout/tokens": float(mask.sum()),
    }
    out.update(batch.stats)
    if modes_per_query:
        out["modes/distinct_correct_per_query"] = sum(modes_per_query) / len(modes_per_query)
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased PASS@k of one query from n samples with c correct: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def coverage_metrics(batch: RolloutBatch, correct_threshold: float = 0.5) -> dict[str, float]:
    """The over-sharpening signals of a batch of n samples per query (evaluation): PASS@k for k = 1, 2, 4, ... <= n
    (unbiased estimator, so k well above the training G is measured from one large sample), and the entropy (nats)
    of the empirical distribution over correct modes, averaged over queries with at least one correct sample (0 when
    a query's correct answers all hit one mode: collapse)."""
    correct = (batch.correct if batch.correct is not None else batch.rewards > correct_threshold)
    groups = batch.group_ids.unique()
    sizes = [int((batch.group_ids == g).sum()) for g in groups]
    n = min(sizes) if sizes else 0
    out: dict[str, float] = {}
    if n == 0:
        return out
    ks = sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})
    per_k = {k: [] for k in ks}
    entropies = []
    for g in groups:
        sel = batch.group_ids == g
        c = int(correct[sel].sum())
        for k in ks:
            per_k[k].append(pass_at_k(int(sel.sum()), c, k))
        if batch.modes is not None and c > 0:
            m = batch.modes[sel]
            counts = m[m >= 0].unique(return_counts=True)[1].float()
            p = counts / counts.sum()
            entropies.append(float(-(p * p.log()).sum()))
    for k in ks:
        out[f"acc/pass_at_{k}"] = sum(per_k[k]) / len(per_k[k])
    if entropies:
        out["modes/answer_entropy"] = sum(entropies) / len(entropies)
    return out
