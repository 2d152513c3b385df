"""Evaluation stage: what the held-out evaluation shows a reader: a PASS@k-vs-k plot per evaluated checkpoint and
the paper's table (per-benchmark AVG@8 and PASS@8, then their average)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

TABLE_K = 8  # the paper reports AVG@8 / PASS@8


def _avg(m: dict[str, float]) -> float:
    return next(v for k, v in m.items() if k.startswith("avg_at_"))


def _pass_curve(m: dict[str, float]) -> list[tuple[int, float]]:
    return sorted((int(k.split("_")[-1]), v) for k, v in m.items() if re.fullmatch(r"pass_at_\d+", k))


def paper_table(per_set: dict[str, dict[str, float]], step: int, k: int = TABLE_K, where: str = "held-out") -> str:
    """Rows `name  AVG@k  PASS@k` in percent; a set with fewer than k samples shows PASS@n, marked with its n."""
    if not per_set:
        return ""
    width = max(12, *(len(s) + 2 for s in per_set))
    lines = [f"{where} evaluation at step {step} (policy alone, lambda = 0)",
             f"{'benchmark':<{width}}{'AVG@' + str(k):>9}{'PASS@' + str(k):>9}"]
    avgs, passes = [], []
    for name, m in per_set.items():
        curve = dict(_pass_curve(m))
        kk = k if k in curve else max(curve)
        note = "" if kk == k else f"  (PASS@{kk}: {kk} samples)"
        avgs.append(_avg(m))
        passes.append(curve[kk])
        lines.append(f"{name:<{width}}{100 * avgs[-1]:>9.1f}{100 * passes[-1]:>9.1f}{note}")
    if len(per_set) > 1:
        lines.append(f"{'average':<{width}}{100 * sum(avgs) / len(avgs):>9.1f}{100 * sum(passes) / len(passes):>9.1f}")
    return "\n".join(lines)


def write_pass_at_k_plot(per_set: dict[str, dict[str, float]], out_path: Path, title: str = "") -> Optional[Path]:
    """PNG: PASS@k against k (log2 axis), one line per set, AVG@n in the legend."""
    curves = {name: _pass_curve(m) for name, m in per_set.items()}
    if not any(curves.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ks, vs = zip(*curve)
        ax.plot(ks, vs, marker="o", label=f"{name} (AVG@{ks[-1]} {_avg(per_set[name]):.2f})")
    ax.set_xscale("log", base=2)
    ticks = sorted({k for curve in curves.values() for k, _ in curve})
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set_xlabel("k (samples per prompt)")
    ax.set_ylabel("PASS@k (unbiased estimator)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
