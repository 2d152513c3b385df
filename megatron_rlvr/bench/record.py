"""What every benchmark's CSV row and final JSON line carry besides its numbers: the commit it measured."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """The short commit of the source tree being benchmarked ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    except OSError:
        return "unknown"
