"""Benchmarks stage: what a user would try instead of the fused sampler, and the sampler's eager host time.

* ``compiled_dlc(mode)``: ``torch.compile`` of the unfused PyTorch DLC sampler (``unfused_dlc``), one
  compile per batch shape (``dynamic=False``), warmed up before timing; a mode whose first compile takes longer
  than the budget is dropped for the remaining batches (the table says so).
* ``FlashInferPolicy``: FlashInfer's fused sampling from logits on the policy alone (no memory model, no
  log-probs): the fastest policy-only sampler a serving stack ships. Its JIT build starts in a child process
  when the benchmark starts, so that it overlaps the other measurements.
* ``host_time``: host time per eager ``dlc_sample`` call, with the fast launch path and with Triton's normal
  JIT launch (``MEGATRON_RLVR_FAST_LAUNCH=0``), at a batch where the GPU is not the bottleneck.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from typing import Callable, Optional

import torch


def unfused_dlc(zp: torch.Tensor, zm: torch.Tensor, lam: float, temperature: float):
    """DLC sampling as a user would write it in PyTorch: float32 logits, softmax, multinomial, two log-softmaxes."""
    z = (zp.float() - lam * zm.float()) / temperature
    tok = torch.multinomial(torch.softmax(z, dim=-1), 1)
    lp_cal = torch.log_softmax(z, dim=-1).gather(1, tok)
    lp_pol = torch.log_softmax(zp.float() / temperature, dim=-1).gather(1, tok)
    return tok, lp_cal, lp_pol


def unfused_policy(zp: torch.Tensor, temperature: float):
    """Plain sampling from the policy alone, unfused."""
    return torch.multinomial(torch.softmax(zp.float() / temperature, dim=-1), 1)


def compiled_dlc(mode: str, backend: str = "inductor") -> Callable:
    """A freshly torch.compile'd unfused DLC sampler (same math as `unfused_dlc`), for one batch shape.

    Dynamo keys its cache on the code object, which every mode and batch shares: after 8 shapes it stops
    compiling and runs eager (`recompile_limit`), which once passed eager times off as compiled ones at B = 1024.
    So the caches are reset first and every (mode, shape) gets its own compile, as a user compiling for one
    shape would."""
    torch._dynamo.reset()
    kwargs = {} if backend != "inductor" else {"mode": None if mode == "default" else mode}
    return torch.compile(unfused_dlc, backend=backend, dynamic=False, fullgraph=False, **kwargs)


# Run in a child process: the first call JIT-builds FlashInfer's sampling extension (or loads it from FlashInfer's
# cache), in another CUDA context, so it never touches the benchmark's stream while a CUDA graph is captured.
_FLASHINFER_BUILD = """
import torch
import flashinfer.sampling as fs
x = torch.randn(4, 1000, device="cuda")
try:
    fs.sampling_from_logits(x.to(torch.bfloat16), seed=0, offset=0)
except (TypeError, RuntimeError, ValueError):
    fs.sampling_from_logits(x, seed=0, offset=0)
torch.cuda.synchronize()
"""


class FlashInferPolicy:
    """``flashinfer.sampling.sampling_from_logits`` on the policy logits, or the reason it cannot run.

    The extension build runs in a child process started with the benchmark (so it overlaps the other
    measurements and never touches this process's CUDA stream while graphs are being captured); ``ready`` waits
    for it, then imports the cached build here and makes one test call.
    """

    def __init__(self) -> None:
        self.fn: Optional[Callable] = None
        self.reason = "not started"
        self.needs_float = False
        self._checked = False
        self._build = subprocess.Popen([sys.executable, "-c", _FLASHINFER_BUILD], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)

    def ready(self, timeout_s: float) -> bool:
        """Whether the baseline can run (waits for the build the first time, at most timeout_s)."""
        if not self._checked:
            self._checked = True
            self._check(timeout_s)
        return self.fn is not None

    def _check(self, timeout_s: float) -> None:
        try:
            out, _ = self._build.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._build.kill()
            self._build.communicate()
            self.reason = f"FlashInfer's sampling build did not finish within {timeout_s:.0f} s"
            return
        if self._build.returncode != 0:
            last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
            self.reason = f"flashinfer.sampling did not run in a child process: {last[0]}"[:240]
            return
        try:
            import flashinfer.sampling as fs

            fn = fs.sampling_from_logits
            x = (torch.randn(4, 151936, device="cuda") * 3).to(torch.bfloat16)
            try:
                fn(x, seed=0, offset=0)
            except (TypeError, RuntimeError, ValueError):
                self.needs_float = True  # versions whose kernel takes float32 logits only
                fn(x.float(), seed=0, offset=0)
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - any failure is reported as the reason for the skip
            self.reason = f"sampling_from_logits failed on a test call: {type(exc).__name__}: {exc}"[:240]
            return
        self.fn, self.reason = fn, ""

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        # Explicit seed/offset: by-value RNG state, so the call can be captured in a CUDA graph like the others.
        return self.fn(logits.float() if self.needs_float else logits, seed=0, offset=step)


def host_time(call: Callable[[int], object], n: int = 2000, rounds: int = 3) -> tuple[float, float, float]:
    """(wall, CPU, drained) seconds per call of n eager calls issued back to back with no sync between, the median
    of ``rounds`` rounds by wall time.

    wall: host time until the last call returned; CPU: this thread's CPU time; drained: until the GPU finished too.
    drained ~ wall means the host was the bottleneck, i.e. wall is the host overhead of one call. Sessions 11 and 12
    read 44-52 us in the first timing of a process and 31-37 us in a later one of the same call. The likely cause:
    the first call of a call class compiles the kernel, which leaves many new long-lived objects, and Python's next
    full collection (tens of ms in a process holding torch and Triton) then falls inside the timed calls. So a full
    collection runs before the rounds, and the median of several rounds is reported.
    """
    for i in range(20):
        call(i)
    gc.collect()
    torch.cuda.synchronize()
    runs = []
    for _ in range(rounds):
        c0, t0 = time.thread_time(), time.perf_counter()
        for i in range(n):
            call(i)
        t1, c1 = time.perf_counter(), time.thread_time()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        runs.append(((t1 - t0) / n, (c1 - c0) / n, (t2 - t0) / n))
    return sorted(runs)[len(runs) // 2]


def host_overhead_table(vocab: int, dtype: torch.dtype, batch: int = 1) -> list[dict]:
    """Host time of eager dlc_sample calls in the engines' two call styles, fast launch vs Triton's JIT launch."""
    from . import dlc_sample_launcher as launcher
    from .dlc_sample_launcher import dlc_sample

    g = torch.Generator(device="cuda").manual_seed(0)
    zp = (torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype)
    zm = (torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype)
    seeds = torch.arange(batch, device="cuda")
    lam_t = torch.full((batch,), 0.5, device="cuda")
    temp_t = torch.ones(batch, device="cuda")
    off_t = torch.zeros(batch, dtype=torch.int64, device="cuda")
    styles = {
        # rollout/embedded.py: scalar lam and T, per-row seeds, the decode position as the offset
        "embedded engine": lambda i: dlc_sample(zp, zm, lam=0.5, temperature=1.0, seed=seeds, offset=i,
                                                return_entropy=True, check_nan=False),
        # rollout/sglang/sampler.py: every per-row parameter a tensor
        "sglang sampler": lambda i: dlc_sample(zp, zm, lam=lam_t, temperature=temp_t, seed=seeds, offset=off_t,
                                               return_entropy=True, check_nan=False),
        "with tau=0.05": lambda i: dlc_sample(zp, zm, lam=0.5, seed=seeds, offset=i, tau=0.05, check_nan=False),
    }
    rows = []
    for name, call in styles.items():
        fast_before = launcher.STAGE1.fast_launches
        fast = host_time(call)
        used_fast = launcher.STAGE1.fast_launches > fast_before
        os.environ["MEGATRON_RLVR_FAST_LAUNCH"] = "0"
        try:
            jit = host_time(call, n=500)
        finally:
            os.environ.pop("MEGATRON_RLVR_FAST_LAUNCH", None)
        rows.append(dict(style=name, batch=batch, load_avg_1min=os.getloadavg()[0], fast_us=fast[0] * 1e6, fast_cpu_us=fast[1] * 1e6,
                         fast_drained_us=fast[2] * 1e6, jit_us=jit[0] * 1e6, jit_cpu_us=jit[1] * 1e6,
                         jit_drained_us=jit[2] * 1e6, speedup=jit[0] / fast[0], fast_path_used=used_fast))
    return rows


def print_host_table(rows: list[dict]) -> None:
    print(f"\neager host time per dlc_sample call (B={rows[0]['batch']}, no sync between calls; 'drained' waits for "
          "the GPU too: close to wall = host-bound, so wall is the host overhead). Target: fast <= 30 us")
    # other work on the host's CPUs (a compiler, a data loader) inflates these figures: say how busy it was
    print(f"host load average (1 min) while timing: {max(r['load_avg_1min'] for r in rows):.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'call style':<16} {'fast us':>8} {'(CPU)':>7} {'(drained)':>9} {'JIT us':>8} {'(CPU)':>7} "
          f"{'(drained)':>9} {'x':>6}  fast path used")
    for r in rows:
        print(f"{r['style']:<16} {r['fast_us']:>8.1f} {r['fast_cpu_us']:>7.1f} {r['fast_drained_us']:>9.1f} "
              f"{r['jit_us']:>8.1f} {r['jit_cpu_us']:>7.1f} {r['jit_drained_us']:>9.1f} {r['speedup']:>6.2f}  "
              f"{r['fast_path_used']}")


def host_breakdown(vocab: int, dtype: torch.dtype, batch: int = 1, n: int = 2000) -> list[tuple[str, float]]:
    """Host microseconds of the parts of one eager embedded-engine call, each timed alone in a loop of `n`: where the
    GPU's eager call spends what the CPU-only harness (tools/bench_sampler_host.py) cannot see (CUDA allocations,
    the stream query, Triton's C launcher and cuLaunchKernel)."""
    from . import dlc_sample_launcher as launcher
    from .dlc_sample_args import check_inputs
    from .dlc_sample_launcher import dlc_sample

    g = torch.Generator(device="cuda").manual_seed(0)
    zp = (torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype)
    zm = (torch.randn(batch, vocab, device="cuda", generator=g) * 3).to(dtype)
    seeds = torch.arange(batch, device="cuda")
    call = lambda i: dlc_sample(zp, zm, lam=0.5, temperature=1.0, seed=seeds, offset=i,  # noqa: E731
                                return_entropy=True, check_nan=False)
    captured = {}
    original = launcher.STAGE1.launch

    def capture(handle, grid, args, device):
        captured.setdefault("launch", (handle, grid, args, device))
        return original(handle, grid, args, device)

    launcher.STAGE1.launch = capture
    try:
        # the first call takes the JIT path and caches the handle, the second is the fast launch captured here; both
        # calls' outputs are held, since the relaunches below write the captured one's buffers again
        keep = [call(0), call(1)]
    finally:
        launcher.STAGE1.launch = original
    dev = torch.device("cuda", torch.cuda.current_device())
    parts: dict[str, Callable[[int], object]] = {
        "whole call (fast launch)": call,
        "check_inputs": lambda i: check_inputs(zp, zm, 0.5, 1.0, seeds, i, None, 0, 1.0, None),
        # the two allocations of the layout before the one-buffer one, for comparison with older runs
        "torch.empty tokens (B,) int64": lambda i: torch.empty(batch, dtype=torch.int64, device=dev),
        "torch.empty stats (3, B) float32": lambda i: torch.empty((3, batch), dtype=torch.float32, device=dev),
        "torch.cuda.current_device()": lambda i: torch.cuda.current_device(),
    }
    st = launcher._PLANS.get(launcher._call_key(zp, zm, 0.5, 1.0, seeds, 0, None, 0, 1.0, 0, True, None, None, False))
    if st is not None:  # what the call allocates: one float32 buffer, split into the outputs (tokens viewed as int64)
        parts["call key + plan look-up"] = lambda i: launcher._PLANS.get(launcher._call_key(
            zp, zm, 0.5, 1.0, seeds, i, None, 0, 1.0, 0, True, None, None, False))
        parts["torch.empty one buffer + its pieces"] = lambda i: torch.empty(
            st.n_float, dtype=torch.float32, device=dev).unsafe_split_with_sizes(st.split)[-1].view(torch.int64)
    if "launch" in captured:
        handle, grid, args, device = captured["launch"]
        stream = launcher.STAGE1._stream
        parts["stream query"] = lambda i: stream(device)
        # The same kernel with the same arguments again (same outputs rewritten): the C launcher + cuLaunchKernel
        parts["C launcher + cuLaunchKernel"] = lambda i: original(handle, grid, args, device)
    rows = []
    for name, fn in parts.items():
        wall, _, _ = host_time(fn, n=n)
        rows.append((name, wall * 1e6))
    del keep
    return rows


def print_host_breakdown(rows: list[tuple[str, float]]) -> None:
    print("\nhost time of the parts of one eager embedded-engine call, each alone (us; the parts overlap the whole's "
          "Python, so they need not add up)")
    for name, us in rows:
        print(f"  {name:<36} {us:>8.2f}")
