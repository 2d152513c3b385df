"""Errors a user fixes (not bugs): each `str(err)` is one line naming the file or field, the problem and the fix.

`ConfigError` (megatron_rlvr.config) covers config values; `RunError` covers a run's files and state: a run folder
in use, a damaged checkpoint, a full disk, a resume that cannot be exact. The CLI prints them as one line and
exits with `exit_code` instead of a traceback.
"""

from __future__ import annotations

# Exit code of a run stopped by SIGTERM/SIGUSR1 after writing a checkpoint: "try again later" (BSD EX_TEMPFAIL).
# The Slurm launcher requeues a job that ends with it; any other non-zero code is a failure and is not requeued.
PREEMPTED_EXIT_CODE = 75


class RunError(RuntimeError):
    """A problem with a run's files or state. `str(err)` is one line: what, where, and the fix."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # one line, whatever the caller's formatting


class ConversionError(ValueError):
    """Bad conversion input (missing/truncated files, mismatched config, unknown architecture); nothing was written.

    Raised by the converter (`megatron_rlvr.convert`, which re-exports it) and by the Qwen3 family's config checks
    (`megatron_rlvr.qwen3.support`, `qwen3.hf`)."""
