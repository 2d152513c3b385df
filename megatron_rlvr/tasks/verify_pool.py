"""Reward stage: verifier calls in worker processes, each with a wall-clock timeout that works from any thread.

math-verify guards its parser with SIGALRM, which only a process's main thread may install, so inside a rollout
thread a pathological response ("\\boxed{9^9^9^9}") can run for minutes and stall the step. Here every call runs
in a spawned worker process; a call that outlives `timeout_s` is abandoned: its worker is killed and replaced, the
call counts as a timeout (reward 0) and the others go on. The pool is usable from any thread (calls from several
threads are served one batch at a time).

Functions are named as ``"module:function"`` so a worker imports them itself (nothing is pickled but arguments).
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing as mp
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Optional, Sequence

_FUNCTIONS: dict[str, Callable] = {}


def load_function(target: str) -> Callable:
    """The callable named by "package.module:function" (imported once per process)."""
    fn = _FUNCTIONS.get(target)
    if fn is None:
        module, sep, name = target.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"{target!r} is not 'module:function'; fix: write e.g. my_rewards:score")
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{target!r} is a {type(obj).__name__}, not a function")
        fn = _FUNCTIONS[target] = obj
    return fn


def _worker_main(conn) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        target, args = job
        try:
            conn.send(("ok", load_function(target)(*args)))
        except BaseException as e:  # the caller decides; a worker never dies of a user's exception
            conn.send(("error", f"{type(e).__name__}: {e}"))


@dataclass
class Outcome:
    """The result of one call: `value` when it returned, else `timed_out` or an `error` message."""

    value: Any = None
    timed_out: bool = False
    error: Optional[str] = None


class VerifierPool:
    """`workers` spawned processes running "module:function" calls with a per-call `timeout_s`."""

    def __init__(self, workers: int, timeout_s: float):
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"VerifierPool(workers={workers}, timeout_s={timeout_s}): need workers >= 1 and "
                             "timeout_s > 0")
        self.num_workers, self.timeout_s = workers, float(timeout_s)
        self._ctx = mp.get_context("spawn")  # fork would copy the trainer's threads and CUDA state
        self._procs: list = []
        self._conns: list = []
        self._lock = threading.Lock()
        self.timeouts = 0  # total calls abandoned for running past timeout_s
        atexit.register(self.close)

    def _spawn(self, i: Optional[int] = None) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="rlvr-verifier")
        proc.start()
        child.close()
        if i is None:
            self._procs.append(proc)
            self._conns.append(parent)
        else:
            self._procs[i], self._conns[i] = proc, parent

    def _replace(self, i: int) -> None:
        self._procs[i].kill()
        self._procs[i].join(timeout=5)
        self._conns[i].close()
        self._spawn(i)

    def map(self, target: str, calls: Sequence[tuple]) -> list[Outcome]:
        """`target(*args)` for every args tuple of `calls`, in order."""
        with self._lock:
            while len(self._procs) < min(self.num_workers, max(len(calls), 1)):
                self._spawn()
            out: list[Optional[Outcome]] = [None] * len(calls)
            todo = deque(range(len(calls)))
            busy: dict[int, tuple[int, float]] = {}  # worker -> (call index, deadline)
            while todo or busy:
                for w in range(len(self._procs)):
                    if todo and w not in busy:
                        j = todo.popleft()
                        self._conns[w].send((target, tuple(calls[j])))
                        # the clock starts when the call is handed out, so queueing never counts against it
                        busy[w] = (j, time.monotonic() + self.timeout_s)
                next_deadline = min(d for _, d in busy.values())
                ready = wait([self._conns[w] for w in busy], timeout=max(0.0, next_deadline - time.monotonic()))
                for w in list(busy):
                    j, deadline = busy[w]
                    if self._conns[w] in ready:
                        try:
                            kind, value = self._conns[w].recv()
                            out[j] = Outcome(value=value) if kind == "ok" else Outcome(error=value)
                        except (EOFError, OSError):  # the worker died (segfault, OOM kill): replace it
                            out[j] = Outcome(error="verifier process died")
                            self._replace(w)
                        del busy[w]
                    elif time.monotonic() >= deadline:
                        out[j] = Outcome(timed_out=True)
                        self.timeouts += 1
                        self._replace(w)
                        del busy[w]
            return out  # type: ignore[return-value]

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
                conn.close()
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1)
        self._procs, self._conns = [], []
