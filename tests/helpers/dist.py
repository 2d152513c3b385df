"""Test helper: run a function or a script on N local ranks (one subprocess each), torchrun-style.

Each rank gets the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, a free
MASTER_PORT) and OMP_NUM_THREADS=1 (the CI machine has 2 cores). The ranks run in their own process groups: when
one rank fails or the timeout passes, every rank is killed (the survivors would otherwise hang in a collective)
and the error names the failing rank with the tail of its output.

    from tests.helpers.dist import run_distributed, run_script

    def _check_allreduce(scale):            # module level, so the subprocess can import it
        import torch.distributed as dist
        dist.init_process_group("gloo")
        ...
        return value                        # any picklable value

    results = run_distributed(_check_allreduce, world_size=2, args=(3.0,))   # [rank0_value, rank1_value]
    outputs = run_script("scripts/foo.py", world_size=2, argv=["--x", "1"])  # [rank0_stdout, rank1_stdout]
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]


class DistributedRunError(RuntimeError):
    """A rank failed or the run timed out; the message holds every failing rank's output tail."""


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world_size: int, port: int, extra: Optional[dict]) -> dict:
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests")] + env.get("PYTHONPATH", "").split(os.pathsep)
    env.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
    )
    env.update(extra or {})
    return env


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def _launch(cmds: list[list[str]], envs: list[dict], timeout: float, cwd: Path) -> list[str]:
    """Start one process per rank, wait for all; kill all on the first failure or at the timeout."""
    logs = [tempfile.TemporaryFile(mode="w+") for _ in cmds]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for cmd, env, log in zip(cmds, envs, logs)
    ]
    deadline = time.monotonic() + timeout
    failed: list[int] = []
    timed_out = False
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    if failed or timed_out:
        what = f"timed out after {timeout:.0f} s" if timed_out else f"rank(s) {failed} failed"
        shown = failed or list(range(len(procs)))
        details = "\n".join(
            f"----- rank {r} (exit {procs[r].returncode}) -----\n{_tail(outputs[r])}" for r in shown
        )
        raise DistributedRunError(f"distributed run of {len(procs)} ranks {what}\n{details}")
    return outputs


def run_distributed(
    fn: Callable,
    world_size: int,
    args: Sequence[Any] = (),
    kwargs: Optional[dict] = None,
    timeout: float = 180.0,
    env: Optional[dict] = None,
) -> list[Any]:
    """Call ``fn(*args, **kwargs)`` on `world_size` ranks; return the ranks' return values in rank order.

    `fn` must be defined at module level of an importable module (a test file is fine); `args`, `kwargs` and
    the return values must pickle. `fn` itself sets up torch.distributed (e.g. via
    ``megatron_rlvr.distributed.parallel.init_distributed``), reading the torchrun environment this helper provides.
    """
    module = fn.__module__
    if module == "__main__" or "<locals>" in fn.__qualname__:
        raise ValueError(f"{fn.__qualname__} must be a module-level function of an importable module")
    module_file = sys.modules[module].__file__
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dist_run_") as tmp:
        payload = Path(tmp) / "payload.pkl"
        payload.write_bytes(pickle.dumps((module, module_file, fn.__qualname__, tuple(args), kwargs or {})))
        cmds, envs = [], []
        for rank in range(world_size):
            result = Path(tmp) / f"result{rank}.pkl"
            cmds.append([sys.executable, str(Path(__file__).resolve()), str(payload), str(result)])
            envs.append(_rank_env(rank, world_size, port, env))
        _launch(cmds, envs, timeout, REPO_ROOT)
        return [pickle.loads((Path(tmp) / f"result{r}.pkl").read_bytes()) for r in range(world_size)]


def run_script(
    script: str | os.PathLike,
    world_size: int,
    argv: Sequence[str] = (),
    timeout: float = 180.0,
    env: Optional[dict] = None,
    cwd: Optional[str | os.PathLike] = None,
) -> list[str]:
    """Run ``python script *argv`` on `world_size` ranks (torchrun environment); return each rank's output."""
    port = free_port()
    cmds = [[sys.executable, str(script), *argv] for _ in range(world_size)]
    envs = [_rank_env(r, world_size, port, env) for r in range(world_size)]
    return _launch(cmds, envs, timeout, Path(cwd) if cwd else REPO_ROOT)


def _worker_main(payload_path: str, result_path: str) -> None:
    import importlib
    import importlib.util

    module_name, module_file, qualname, args, kwargs = pickle.loads(Path(payload_path).read_bytes())
    try:
        mod = importlib.import_module(module_name)
    except ImportError:
        spec = importlib.util.spec_from_file_location(module_name, module_file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = mod
        spec.loader.exec_module(mod)
    fn = mod
    for part in qualname.split("."):
        fn = getattr(fn, part)
    out = fn(*args, **kwargs)
    Path(result_path).write_bytes(pickle.dumps(out))
    try:  # leave the process group cleanly so no rank waits on a dead peer at exit
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - teardown must not turn a passing rank into a failure
        pass


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2])
