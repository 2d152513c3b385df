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

    def __enter__(self) -> "StepProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, metrics: dict) -> None:
        parts = [f"{label} {metrics[k]:.3g}" for label, k in SUMMARY_KEYS if k in metrics]
        self.progress.update(self.task, advance=1, summary=" | ".join(parts))

    def print(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg)
