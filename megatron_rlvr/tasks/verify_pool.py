"""Reward stage: verifier calls in worker processes, each with a wall-clock timeout that works from any thread.

math-verify guards its parser with SIGALRM, which only a process's main thread may install, so inside a rollout
thread a pathological response ("\\boxed{9^9^9^9}") can run for minutes and stall the step. Here every call runs
in a worker process (a fresh interpreter); a call that outlives `timeout_s` is abandoned: its worker is killed and
replaced, the call counts as a timeout (reward 0) and the others go on. The pool is usable from any thread (calls
from several threads are served one batch at a time).

Functions are named as ``"module:function"`` so a worker imports them itself (nothing is pickled but arguments).
"""

from __future__ import annotations

import atexit
import importlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
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
        kind, target, args = job
        try:
            fn = load_function(target)
            if kind == "load":  # import (and warm up) before any call's clock starts
                warmup = getattr(fn, "warmup", None)
                if warmup is not None:
                    warmup()
                conn.send(("ok", None))
            else:
                conn.send(("ok", fn(*args)))
        except BaseException as e:  # the caller decides; a worker never dies of a user's exception
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _worker_fd(fd: int) -> None:
    """Entry point of a worker process: serve calls on the inherited socket `fd`."""
    _worker_main(Connection(fd))


# a worker's start-up (interpreter, imports of the verifier such as sympy) is not part of any call's timeout
STARTUP_TIMEOUT_S = 300.0


@dataclass
class Outcome:
    """The result of one call: `value` when it returned, else `timed_out` or an `error` message."""

    value: Any = None
    timed_out: bool = False
    error: Optional[str] = None


class VerifierPool:
    """`workers` worker processes running "module:function" calls with a per-call `timeout_s`."""

    def __init__(self, workers: int, timeout_s: float):
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"VerifierPool(workers={workers}, timeout_s={timeout_s}): need workers >= 1 and "
                             "timeout_s > 0")
        self.num_workers, self.timeout_s = workers, float(timeout_s)
        self._procs: list = []
        self._conns: list = []
        self._loaded: list[set] = []  # targets each worker has imported
        self._lock = threading.Lock()
        self.timeouts = 0  # total calls abandoned for running past timeout_s
        atexit.register(self.close)

    def _spawn(self, i: Optional[int] = None) -> None:
        # A fresh interpreter (not multiprocessing's spawn, which re-runs the caller's __main__ script, nor fork,
        # which would copy the trainer's threads and CUDA state) talking over a socket pair. The parent's sys.path
        # goes along so a user's reward module importable here is importable there.
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        code = f"from megatron_rlvr.tasks.verify_pool import _worker_fd; _worker_fd({theirs.fileno()})"
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(theirs.fileno(),), env=env,
                                stdin=subprocess.DEVNULL)
        theirs.close()
        conn = Connection(ours.detach())
        if i is None:
            self._procs.append(proc)
            self._conns.append(conn)
            self._loaded.append(set())
        else:
            self._procs[i], self._conns[i], self._loaded[i] = proc, conn, set()

    def _load(self, w: int, target: str) -> None:
        if target in self._loaded[w]:
            return
        self._conns[w].send(("load", target, ()))
        if not self._conns[w].poll(STARTUP_TIMEOUT_S):
            raise RuntimeError(f"verifier worker did not import {target!r} within {STARTUP_TIMEOUT_S:.0f} s")
        kind, value = self._conns[w].recv()
        if kind != "ok":
            raise RuntimeError(f"verifier worker could not load {target!r}: {value}")
        self._loaded[w].add(target)

    def _replace(self, i: int) -> None:
        self._procs[i].kill()
        self._procs[i].wait(timeout=5)
        self._conns[i].close()
        self._spawn(i)

    def map(self, target: str, calls: Sequence[tuple]) -> list[Outcome]:
        """`target(*args)` for every args tuple of `calls`, in order."""
        if not calls:
            return []
        with self._lock:
            while len(self._procs) < min(self.num_workers, max(len(calls), 1)):
                self._spawn()
            for w in range(len(self._procs)):  # imports first, so no call's clock waits for another worker's
                self._load(w, target)
            out: list[Optional[Outcome]] = [None] * len(calls)
            todo = deque(range(len(calls)))
            busy: dict[int, tuple[int, float]] = {}  # worker -> (call index, deadline)
            while todo or busy:
                for w in range(len(self._procs)):
                    if todo and w not in busy:
                        self._load(w, target)
                        j = todo.popleft()
                        self._conns[w].send(("call", target, tuple(calls[j])))
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
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
        self._procs, self._conns, self._loaded = [], [], []
