"""Console progress: a rich progress bar over RL steps with a live one-line summary of the latest metrics."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

SUMMARY_KEYS = (
    ("reward", "reward/mean"), ("avg@G", "acc/avg_at_g"), ("pass@G", "acc/pass_at_g"),
    ("entropy", "policy/entropy"), ("modes", "modes/distinct_correct_per_query"), ("mem", "memory/loss"),
    ("s/step", "time/step"),
)
# The over-sharpening signals, shown so a user sees collapse begin while training: the policy alone at the latest
# evaluation (modes, entropy over correct answers, PASS@k at the largest k measured) and the spread (p05-p95) of
# both off-policy ratios of the step (numerical mismatch, DLC shift).
EVAL_KEYS = (("eval modes", "eval/distinct_correct_per_query"), ("H(ans)", "eval/answer_entropy"))
RATIO_KEYS = (("mis", "offpolicy/mismatch"), ("shift", "offpolicy/shift"))


def summary_line(metrics: dict, last_eval: dict | None = None) -> str:
    """The live one-line summary: latest training metrics, then the latest evaluation's over-sharpening signals."""
    parts = [f"{label} {metrics[k]:.3g}" for label, k in SUMMARY_KEYS if k in metrics]
    ev = dict(last_eval or {})
    ev.update({k: v for k, v in metrics.items() if k.startswith("eval/")})
    parts += [f"{label} {ev[k]:.3g}" for label, k in EVAL_KEYS if k in ev]
    ks = [int(k[13:]) for k in ev if k.startswith("eval/pass_at_") and k[13:].isdigit()]
    if ks:
        parts.append(f"pass@{max(ks)} {ev[f'eval/pass_at_{max(ks)}']:.3g}")
    for label, prefix in RATIO_KEYS:
        lo, hi = metrics.get(f"{prefix}/p05"), metrics.get(f"{prefix}/p95")
        if lo is not None and hi is not None and not (label == "shift" and lo == hi == 1.0):
            parts.append(f"{label} {lo:.2f}-{hi:.2f}")
    return " | ".join(parts)


class StepProgress:
    """`with StepProgress(total, start, enabled) as p: p.advance(metrics)`; silent on ranks other than 0."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "RLVR") -> None:
        self.enabled = enabled
        self.console = Console(file=sys.stdout, force_terminal=None)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[summary]}"), console=self.console,
            disable=not enabled, refresh_per_second=4,
        )
        self.task = self.progress.add_task(description, total=total, completed=start, summary="")
        self.last_eval: dict = {}  # evaluation runs every eval.interval steps; its numbers stay on screen between

    def __enter__(self) -> "StepProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, metrics: dict) -> None:
        summary = summary_line(metrics, self.last_eval)
        self.last_eval.update({k: v for k, v in metrics.items() if k.startswith("eval/")})
        self.progress.update(self.task, advance=1, summary=summary)

    def print(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg)
