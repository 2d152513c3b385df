"""Seed statistics of the study: mean and spread per row, and for a difference between two rows (paired by seed,
since every row of a seed starts from the same warm start and draws the same prompts) a 95% Student-t interval of
the mean paired difference and an exact sign-flip permutation test."""

from __future__ import annotations

import itertools
import math
import statistics

# two-sided 95% quantiles of Student's t by degrees of freedom (standard table values)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k < df) if df < 30 else None
    return _T975[below] if below is not None else 1.96


def mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def t_interval(diffs: list[float]) -> tuple[float, float]:
    """95% interval of the mean of `diffs`: mean +- t_{0.975, n-1} * sd / sqrt(n)."""
    if len(diffs) < 2:
        return float("nan"), float("nan")
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return m - half, m + half


def sign_flip_p(diffs: list[float]) -> float:
    """Two-sided p-value of H0 "the paired difference is symmetric around 0": the share of the 2^n sign patterns
    whose |mean| is at least the observed one. Exact, but coarse: with n = 5 seeds it cannot go below 2/32."""
    if not diffs:
        return float("nan")
    obs = abs(statistics.fmean(diffs)) - 1e-12
    pats = list(itertools.product((1, -1), repeat=len(diffs)))
    hits = sum(abs(statistics.fmean(s * d for s, d in zip(p, diffs))) >= obs for p in pats)
    return hits / len(pats)


def compare(a: dict[int, float], b: dict[int, float]) -> dict:
    """Paired comparison of per-seed values a[seed] - b[seed] over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    lo, hi = t_interval(diffs)
    return {"n": len(seeds), "diff": statistics.fmean(diffs) if diffs else float("nan"), "lo": lo, "hi": hi,
            "p": sign_flip_p(diffs)}


def verdict(c: dict, expect_positive: bool = True) -> str:
    """'agrees' / 'DISAGREES' when the 95% interval excludes 0, else 'no significant difference'."""
    if c["n"] < 2 or math.isnan(c["diff"]):
        return f"not measured (n = {c['n']})"
    txt = f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}], sign-flip p = {c['p']:.3f}, n = {c['n']}"
    if not (c["lo"] > 0 or c["hi"] < 0):
        return f"no significant difference ({txt})"
    return f"{'agrees' if (c['diff'] > 0) == expect_positive else 'DISAGREES'} ({txt})"
