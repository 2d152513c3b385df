"""Evaluation stage: AVG@k and the unbiased PASS@k estimator (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", eq. 1) from n >= k samples per prompt.

With c correct among n samples, PASS@k = 1 - C(n - c, k) / C(n, k): the probability that k samples drawn without
replacement from the n contain at least one correct one. It is computed as 1 - prod_{i = n-c+1..n} (1 - k / i),
which never forms the (huge) binomial coefficients. AVG@k, the expected share of correct answers among k samples,
is c / n for every k <= n, so one number serves every k.
"""

from __future__ import annotations

from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased PASS@k of one prompt with `c` correct among `n` samples (needs 1 <= k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k(n={n}, c={c}, k={k}): need 0 <= c <= n and 1 <= k <= n")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_up_to(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself (the paper's PASS@8 from 8 samples; 64 samples: up to PASS@64)."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def accuracy_at_k(correct: Sequence[Sequence[bool]]) -> dict[str, float]:
    """`avg_at_<n>` and `pass_at_<k>` for k in `ks_up_to(n)`, averaged over prompts; `correct[p]` holds the n
    verdicts of prompt p (the same n for every prompt)."""
    if not correct:
        return {}
    n = len(correct[0])
    if n == 0 or any(len(c) != n for c in correct):
        raise ValueError("accuracy_at_k: every prompt needs the same number (>= 1) of samples")
    counts = [sum(bool(x) for x in c) for c in correct]
    out = {f"avg_at_{n}": sum(counts) / (n * len(counts))}
    for k in ks_up_to(n):
        out[f"pass_at_{k}"] = sum(pass_at_k(n, c, k) for c in counts) / len(counts)
    return out
