"""Toy over-sharpening study, plotting stage: one PNG per paper figure (matplotlib, Agg backend).

Curves are medians over seeds with the 25-75% band; the minority correct label min(p(Cat), p(Persian)) is
drawn on a log axis with the 1% collapse threshold, because which of the two labels wins is random.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from examples.toy_softmax.sim import (  # noqa: E402
    CAT,
    COLLAPSE_THRESHOLD,
    SIAMESE,
    SIAMESE_VARIANTS,
    ToyConfig,
    ToyResult,
)

NAMES = {"raw": "raw reward", "mean": "mean-shifted", "grpo": "normalized (GRPO)", "rloo": "RLOO",
         "reinforce_pp_baseline": "REINFORCE++ baseline"}
FLOOR = 1e-6  # log axes: probabilities below this are drawn at the floor


def _band(ax, values: torch.Tensor, label: str, color=None, log: bool = True) -> None:
    """Median and 25-75% band over seeds of a (steps + 1, seeds) tensor."""
    v = values.clamp_min(FLOOR) if log else values
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=v.dtype), dim=1)
    x = range(v.shape[0])
    (line,) = ax.plot(x, q[1], label=label, color=color, lw=1.6)
    ax.fill_between(x, q[0], q[2], color=line.get_color(), alpha=0.18, lw=0)


def _minority_axes(ax, title: str) -> None:
    ax.set_yscale("log")
    ax.set_ylim(FLOOR, 1.0)
    ax.axhline(COLLAPSE_THRESHOLD, color="k", ls=":", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")


def _seed_lines(ax, result: ToyResult, title: str, n: int = 16) -> None:
    p = result.persian_probs[:, :n, CAT]
    ax.plot(range(p.shape[0]), p, lw=0.7, alpha=0.7)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")


def _estimator_figure(estimators, group_sizes, get, path: Path, title: str) -> Path:
    fig, axes = plt.subplots(2, len(estimators), figsize=(4.2 * len(estimators), 6.4), squeeze=False)
    for j, est in enumerate(estimators):
        ax = axes[0, j]
        for g in group_sizes:
            _band(ax, get(est, g).minority_correct, f"G={g}")
        _minority_axes(ax, f"{NAMES[est]}: minority correct label")
        if j == 0:
            ax.set_ylabel("min(p(Cat), p(Persian))")
        ax.legend(fontsize=7)
        _seed_lines(axes[1, j], get(est, 8), f"{NAMES[est]}, G=8: p(Cat | Persian), one line per seed")
        if j == 0:
            axes[1, j].set_ylabel("p(Cat)   (1 - p(Cat) ~ p(Persian))")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(figs: dict[str, list[ToyConfig]], results: dict, key: Callable, out: Path) -> list[Path]:
    """Draw figures 1, 2, 4, 5 and 6 from the study's results into `out`; returns the written paths."""
    by = {key(c): results[key(c)] for cfgs in figs.values() for c in cfgs}

    def find(fig: str, **match) -> ToyResult:
        for c in figs[fig]:
            if all(getattr(c, k) == v for k, v in match.items()):
                return by[key(c)]
        raise KeyError(f"{fig}: no setting with {match}")

    written = []
    group_sizes = sorted({c.group_size for c in figs["fig1"]})
    written.append(_estimator_figure(
        ("raw", "mean", "grpo"), group_sizes, lambda e, g: find("fig1", estimator=e, group_size=g),
        out / "fig1_estimators.png", "Fig 1: training on Persian, reward for Cat or Persian (SGD)",
    ))
    written.append(_estimator_figure(
        ("rloo", "reinforce_pp_baseline"), group_sizes, lambda e, g: find("fig4", estimator=e, group_size=g),
        out / "fig4_rloo_reinforcepp.png", "Fig 4: RLOO and REINFORCE++ with baseline (SGD)",
    ))

    # Fig 2: held-out Siamese query, three similarities, evaluated on the same training runs
    g2 = [c.group_size for c in figs["fig2"]]
    fig, axes = plt.subplots(2, len(g2), figsize=(4.2 * len(g2), 6.4), squeeze=False)
    for j, g in enumerate(g2):
        r = find("fig2", group_size=g)
        for name in SIAMESE_VARIANTS:
            p = r.siamese_probs[name]
            _band(axes[0, j], p[..., SIAMESE], name.split("-")[1], log=False)
            _band(axes[1, j], p[..., CAT] + p[..., SIAMESE], name.split("-")[1], log=False)
        axes[0, j].set_title(f"GRPO G={g}: p(Siamese | Siamese input)", fontsize=9)
        axes[1, j].set_title(f"GRPO G={g}: p(Cat or Siamese | Siamese input)", fontsize=9)
        for ax in axes[:, j]:
            ax.set_xlabel("step")
            ax.set_ylim(0, 1)
            ax.legend(title="similarity", fontsize=7, title_fontsize=7)
    fig.suptitle("Fig 2: semantic coupling: the held-out Siamese query while training on Persian", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "fig2_semantic_coupling.png", dpi=110)
    plt.close(fig)
    written.append(out / "fig2_semantic_coupling.png")

    # Fig 5: optimizers
    fig, axes = plt.subplots(1, len(group_sizes), figsize=(3.6 * len(group_sizes), 3.6), squeeze=False)
    for j, g in enumerate(group_sizes):
        for opt in ("sgd", "momentum", "adamw"):
            _band(axes[0, j], find("fig5", group_size=g, optimizer=opt).minority_correct, opt)
        _minority_axes(axes[0, j], f"GRPO G={g}")
        axes[0, j].legend(fontsize=7)
    axes[0, 0].set_ylabel("min(p(Cat), p(Persian))")
    fig.suptitle("Fig 5: SGD vs SGD+momentum(0.9) vs AdamW", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "fig5_optimizers.png", dpi=110)
    plt.close(fig)
    written.append(out / "fig5_optimizers.png")

    # Fig 6: IAC and IAC + DLC, under SGD and AdamW
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    for i, opt in enumerate(("sgd", "adamw")):
        for c in figs["fig6"]:
            if c.optimizer != opt:
                continue
            _band(axes[i, 0], by[key(c)].minority_correct, c.label().replace(f" G={c.group_size} {opt}", "") or "GRPO")
        _minority_axes(axes[i, 0], f"{opt}: minority correct label, G={figs['fig6'][0].group_size}")
        axes[i, 0].legend(fontsize=7)
        full = find("fig6", optimizer=opt, iac_alpha=1.0, tis_cap=0.0, dlc_lambda=figs["fig6"][2].dlc_lambda)
        _seed_lines(axes[i, 1], full, f"{opt}: IAC + DLC, p(Cat | Persian) per seed")
    fig.suptitle("Fig 6: inverse-success advantage calibration and distribution-level calibration", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "fig6_iac_dlc.png", dpi=110)
    plt.close(fig)
    written.append(out / "fig6_iac_dlc.png")
    return written
