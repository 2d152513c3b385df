"""Rollout stage, SGLang engine: the `RolloutEngine` of rollout.engine=sglang (DLC inside SGLang).

    engine = SGLangEngine(model_path, policy_shape=P, memory_shape=M)          # in-process sglang.Engine
    engine = SGLangEngine(server_urls=["http://10.0.0.5:30000"], ...)          # attach to running servers
    gens = engine.generate(prompts, SamplingParams(lam=0.5, ...))             # Generation records
    megatron_rlvr.weight_sync.build_transport(engine, ...).push("policy", hf_named_tensors)   # new weights
    engine.release_memory(); ...train...; engine.resume_memory()              # colocated placement

The model folder comes from `build_model_dir` (model_dir.py). Every generated token carries log pi_cal and
log pi_policy from the fused DLC sampler (sampler.py); they come back in SGLang's meta_info.

Failures: a start-up failure raises `SGLangEngineError` naming the cause; if an SGLang child process dies later,
the next call raises `SGLangEngineError` instead of SGLang's default of killing the whole process tree (the
trainer's included), so the trainer can report it and stop with its last checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from typing import Any, Optional, Sequence

import torch

from megatron_rlvr.qwen3.shapes import Qwen3Shape
from megatron_rlvr.rollout.engine import RolloutEngineError, served_memory_shape
from megatron_rlvr.rollout.sglang import remote
from megatron_rlvr.rollout.sglang.protocol import (
    ARCHITECTURE, MEMORY_CONFIG_KEY, MODEL_PACKAGE, OUT_STATS, POLICY_ONLY_KEY, PARAM_LAM, PARAM_SEED, PARAM_TAU,
    SAMPLER_BACKEND, STAT_ENTROPY, STAT_LOGPROB_CAL, STAT_LOGPROB_POLICY, check_stack_compat,
)
from megatron_rlvr.rollout.types import Generation, SamplingParams

logger = logging.getLogger(__name__)

# Defaults for SGLang on a CPU: SGLang's CPU path needs these (shared/SGLANG-NOTES.md), and a small KV pool keeps
# start-up fast (by default SGLang sizes it from free RAM: gigabytes for a tiny model).
CPU_DEFAULTS = dict(attention_backend="torch_native", disable_cuda_graph=True, dtype="float32",
                    max_total_tokens=16384)
# On a GPU the DLC model is tested (tests/sglang/test_gpu_*.py) with the triton attention backend. SGLang's own
# default there is FA3, whose library the trimmed sgl-kernel the project carries does not ship, and which the DLC
# model's two-stack KV layout has never been checked with: the engine died at start without this default.
GPU_DEFAULTS = dict(attention_backend="triton")


def engine_args(model_path: str, device: str, placement: str, extra: dict) -> dict[str, Any]:
    """The sglang.Engine arguments: the DLC model's tested defaults per device, then the user's rollout.sglang."""
    # sleep_on_idle: an idle scheduler otherwise spins a core at 100% (SGLang's event loop polls its sockets), and
    # colocated that process sits beside the trainer through every update. With it, and with the updates' host
    # syncs removed, the updates next to SGLang took ~28% less time (BENCHMARKS.md "Session 8"; the two changes were
    # not measured apart). It wakes on a request at once (zmq poll), so generation loses nothing.
    args: dict[str, Any] = dict(model_path=model_path, skip_tokenizer_init=True, enable_custom_logit_processor=True,
                                device=device, custom_sigquit_handler=_log_child_failure, sleep_on_idle=True)
    if device == "cpu":
        args.update(CPU_DEFAULTS)
    else:
        args.update(GPU_DEFAULTS, sampling_backend=SAMPLER_BACKEND, enable_memory_saver=placement == "colocated")
    args.update(extra)
    return args


# Colocated engines of one node each take a block of ports (SGLang derives its internal ports from `port`).
ENGINE_BASE_PORT, PORTS_PER_ENGINE = 30000, 50


class SGLangEngineError(RolloutEngineError):
    """The SGLang engine failed to start, died, or rejected a request."""


def request_seed(base_seed: int, index: int) -> int:
    """Per-sequence RNG seed: the same (base seed, prompt index) always gives the same draws."""
    return (base_seed * 1_000_003 + index * 7_919 + 17) % (2**62)


def sglang_sampling_params(sampling: SamplingParams, seed: int) -> dict:
    """SGLang's per-request sampling_params dict for our SamplingParams (DLC options in custom_params)."""
    params = {
        "max_new_tokens": int(sampling.max_new_tokens),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k) if sampling.top_k > 0 else -1,
        "custom_params": {PARAM_LAM: float(sampling.lam), PARAM_TAU: sampling.tau, PARAM_SEED: int(seed)},
    }
    if sampling.stop_token_ids:
        params["stop_token_ids"] = [int(t) for t in sampling.stop_token_ids]
    return params


def to_generation(prompt: Sequence[int], out: dict) -> Generation:
    """A Generation record from one SGLang output dict (token ids + meta_info)."""
    meta = out["meta_info"]
    reason = (meta.get("finish_reason") or {}).get("type")
    if reason not in ("stop", "length"):
        raise SGLangEngineError(f"SGLang finished a request with reason {meta.get('finish_reason')!r} "
                                "(aborted or failed); see the SGLang log above")
    ids = [int(t) for t in out["output_ids"]]
    if OUT_STATS not in meta:
        raise SGLangEngineError(
            f"SGLang output lacks {OUT_STATS!r}: the engine is not serving the DLC model with the DLC sampler "
            "(was it started from build_model_dir's folder with SGLANG_EXTERNAL_MODEL_PACKAGE set?)")
    stats = meta[OUT_STATS]  # per token (log pi_cal, log pi_policy, entropy): tuples, or lists over HTTP
    if len(stats) != len(ids):
        raise SGLangEngineError(f"SGLang returned {len(ids)} tokens but {len(stats)} DLC log-prob records")
    lp_cal = [float(r[STAT_LOGPROB_CAL]) for r in stats]
    lp_pol = [float(r[STAT_LOGPROB_POLICY]) for r in stats]
    ent = [float(r[STAT_ENTROPY]) for r in stats]
    bad = next((i for i, (a, b) in enumerate(zip(lp_cal, lp_pol)) if math.isnan(a) or math.isnan(b)), None)
    if bad is not None:
        raise SGLangEngineError(
            f"the DLC sampler could not draw response token {bad} (NaN log-probability): the policy or memory "
            "logits held NaN/inf at that step, or tau/top-k/top-p allowed no token; check both models' weights "
            "(a diverged update?) and the rollout sampling options")
    return Generation(prompt_ids=list(prompt), response_ids=ids, logprob_cal=lp_cal, logprob_policy=lp_pol,
                      finish_reason=reason, entropy_cal=ent)


def check_model_dir(model_path: str) -> bool:
    """Fail fast, before SGLang spawns anything, if `model_path` is not a DLC model folder; True if it is the
    policy-only one."""
    cfg_path = os.path.join(model_path, "config.json")
    if not os.path.isfile(cfg_path):
        raise SGLangEngineError(f"{cfg_path} not found: SGLangEngine needs the folder written by build_model_dir")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("architectures") == [ARCHITECTURE] and cfg.get(POLICY_ONLY_KEY) is True:
        return True  # the policy-only model (DLC off): no second stack to check against
    if cfg.get("architectures") != [ARCHITECTURE] or not isinstance(cfg.get(MEMORY_CONFIG_KEY), dict):
        raise SGLangEngineError(
            f"{cfg_path} is not a DLC model config (architectures={cfg.get('architectures')}, "
            f"{MEMORY_CONFIG_KEY} {'present' if MEMORY_CONFIG_KEY in cfg else 'missing'}); build it with "
            "build_model_dir(policy_shape, memory_shape, ...)")
    try:
        check_stack_compat(cfg, cfg[MEMORY_CONFIG_KEY])
    except ValueError as e:
        raise SGLangEngineError(f"{cfg_path}: {e}") from e
    return False


class SGLangEngine:
    """RolloutEngine backed by SGLang serving the DLC model (policy + memory stacks, fused DLC sampler).

    Args:
        model_path: folder from `build_model_dir` (in-process mode; ignored when `server_urls` is given).
        server_urls: attach to running SGLang servers (started with `remote.server_command`) instead.
        policy_shape, memory_shape: Qwen3 shapes, which the weight transports check tensor names against.
        placement: "colocated" (release/resume GPU memory around training) or "dedicated".
        sglang: extra sglang.Engine / ServerArgs options, passed through verbatim (rollout.sglang).
        device: "cuda" or "cpu"; default cuda when available.
    """

    def __init__(
        self,
        model_path: Optional[str] = None,
        *,
        server_urls: Sequence[str] = (),
        policy_shape: Optional[Qwen3Shape] = None,
        memory_shape: Optional[Qwen3Shape] = None,
        placement: str = "colocated",
        sglang: Optional[dict] = None,
        device: Optional[str] = None,
    ) -> None:
        if placement not in ("colocated", "dedicated"):
            raise ValueError(f"placement must be colocated or dedicated, got {placement!r}")
        self.shapes = {"policy": policy_shape, "memory": memory_shape}
        self.placement = placement
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._engine = None
        self._failure: Optional[str] = None
        self._released = False
        self.policy_only = False  # the in-process folder's `dlc_policy_only` (read at start)
        self.server_urls = [u.rstrip("/") for u in server_urls]
        if self.server_urls:
            remote.check_servers(self.server_urls)
        else:
            if model_path is None:
                raise ValueError("SGLangEngine needs model_path (a build_model_dir folder) or server_urls")
            self._start(str(model_path), dict(sglang or {}))

    @classmethod
    def from_config(cls, cfg, model_path: Optional[str] = None, engine_index: int = 0,
                    base_gpu_id: Optional[int] = None, dtype: Optional[str] = None) -> "SGLangEngine":
        """Build from a RunConfig: rollout.{server_urls, placement, tp, sglang}, both shapes.

        `engine_index` / `base_gpu_id`: the colocated engine's place in the rollout layout (one per rollout.tp
        GPUs): it runs on GPUs base_gpu_id .. base_gpu_id + tp - 1, and its ports are offset by the index so
        that the engines of one node do not collide. `dtype` (the resolved `rollout.dtype`) is the engine's
        compute dtype unless rollout.sglang names one.
        """
        r = cfg.rollout
        extra = dict(r.sglang)
        if dtype is not None:
            extra.setdefault("dtype", dtype)
        if model_path is not None and not r.server_urls:
            # a dummy-initialised folder: the trainer pushes both models' real weights right after start
            extra.setdefault("load_format", "dummy")
            if base_gpu_id is not None:
                extra.setdefault("base_gpu_id", base_gpu_id)
                extra.setdefault("tp_size", r.tp)
            extra.setdefault("port", ENGINE_BASE_PORT + PORTS_PER_ENGINE * engine_index)
        return cls(model_path, server_urls=list(r.server_urls), policy_shape=cfg.policy.shape(),
                   memory_shape=served_memory_shape(cfg), placement=r.placement, sglang=extra)

    # ----------------------------------------------------------------------------------------- lifecycle
    def _start(self, model_path: str, extra: dict) -> None:
        if extra.get("load_format") != "dummy" or os.path.isdir(model_path):
            self.policy_only = check_model_dir(model_path)
        pkg = os.environ.get("SGLANG_EXTERNAL_MODEL_PACKAGE")
        if pkg and pkg != MODEL_PACKAGE:
            raise SGLangEngineError(
                f"SGLANG_EXTERNAL_MODEL_PACKAGE={pkg!r} is set, but the DLC model lives in {MODEL_PACKAGE!r}; "
                "unset it (SGLang loads one external package) or point it at the DLC package")
        # Inherited by SGLang's spawned children, each of which then registers the DLC model and sampler.
        os.environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] = MODEL_PACKAGE
        if self.device == "cpu":
            os.environ["SGLANG_USE_CPU_ENGINE"] = "1"  # without it SGLang's rotary embedding imports vllm
        args = engine_args(model_path, self.device, self.placement, extra)
        import sglang

        import megatron_rlvr.rollout.sglang.models  # noqa: F401  (registers the sampler in this process too)

        try:
            self._engine = sglang.Engine(**args)
        except BaseException as e:  # SGLang raises RuntimeError / SystemExit / custom errors while launching
            backend = args.get("attention_backend")
            raise SGLangEngineError(
                f"SGLang engine failed to start from {model_path!r} ({type(e).__name__}: {e}); the SGLang log "
                f"above names the failing process. Attention backend: {backend!r} (rollout.sglang.attention_backend;"
                f" the DLC model is tested with {GPU_DEFAULTS['attention_backend']!r} on GPU and "
                f"{CPU_DEFAULTS['attention_backend']!r} on CPU): a backend whose kernels are not installed fails "
                "here. Check also the model folder (build_model_dir), the other rollout.sglang options and free "
                "memory") from e
        self._child_pids = list(self._engine.get_all_child_pids())
        self._install_failure_handler()

    def kv_pool_tokens(self) -> Optional[int]:
        """KV-cache capacity in tokens of the in-process engine (SGLang sizes it from the memory free at its start);
        None for attached servers, which this process does not restart."""
        if self._engine is None or self.server_urls:
            return None
        tokens = self._engine.get_server_info().get("max_total_num_tokens")
        return int(tokens) if tokens else None

    def _install_failure_handler(self) -> None:
        """Route SGLang's child-failure SIGQUIT to an error on the next call instead of killing this process."""
        if threading.current_thread() is not threading.main_thread():
            return
        eng = self._engine
        async def create_handle_loop():
            # Inside the running loop, as SGLang itself does on the first request: called outside, SGLang would
            # attach its output-handling task to a fresh event loop that never runs, and requests would hang.
            eng.tokenizer_manager.auto_create_handle_loop()  # installs SGLang's SIGQUIT handler; ours replaces it

        eng.loop.run_until_complete(create_handle_loop())

        def on_child_failure(*_):
            self._failure = "an SGLang child process failed (SIGQUIT); see the SGLang log above"
            eng.loop.stop()  # ends a pending run_until_complete with RuntimeError

        eng.loop.add_signal_handler(signal.SIGQUIT, on_child_failure)

    def _check_alive(self) -> None:
        if self._engine is None and not self.server_urls:
            raise SGLangEngineError("the SGLang engine was shut down")
        if self._failure is None and self._engine is not None:
            dead = [p for p in self._child_pids if not _pid_alive(p)]
            if dead:
                self._failure = f"SGLang child processes {dead} exited"
        if self._failure is not None:
            raise SGLangEngineError(f"SGLang engine died: {self._failure}; restart the run from its last checkpoint")

    def _call(self, what: str, fn, *args, **kwargs):
        self._check_alive()
        try:
            return fn(*args, **kwargs)
        except SGLangEngineError:
            raise
        except Exception as e:
            if self._failure is not None or not all(_pid_alive(p) for p in getattr(self, "_child_pids", [])):
                self._failure = self._failure or f"child process exited during {what}"
                raise SGLangEngineError(f"SGLang engine died during {what}: {self._failure}") from e
            raise SGLangEngineError(f"SGLang {what} failed: {type(e).__name__}: {e}") from e

    def shutdown(self) -> None:
        """Stop this engine's processes, and only those: SGLang's own `Engine.shutdown` kills every child process
        of the calling process, which in the trainer includes Megatron's checkpoint writers (a restarted engine
        would leave the next checkpoint save with a broken pipe)."""
        if self._engine is None:
            return
        eng, self._engine = self._engine, None
        watchdog = getattr(getattr(eng, "tokenizer_manager", None), "_subprocess_watchdog", None)
        if watchdog is not None:
            watchdog.stop()  # else it reports our own kills below as a crash
        rpc = getattr(eng, "send_to_rpc", None)
        if rpc is not None:
            rpc.close(linger=0)
        _kill_trees(getattr(self, "_child_pids", []))

    def __enter__(self) -> "SGLangEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ----------------------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        """One response per prompt, sampled from pi_cal; both log-probs and the finish reason per record."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        params = [sglang_sampling_params(sampling, request_seed(sampling.seed, sampling.seed_offset + i))
                  for i in range(len(prompts))]
        ids = [[int(t) for t in p] for p in prompts]
        if self.server_urls:
            outs = self._call("generate", remote.generate, self.server_urls, ids, params, _group_size(ids))
        else:
            from megatron_rlvr.rollout.sglang.sampler import DLCRequestParams

            carrier = DLCRequestParams().to_str()
            outs = self._call("generate", self._engine.generate, input_ids=ids, sampling_params=params,
                              custom_logit_processor=[carrier] * len(ids))
        return [to_generation(p, o) for p, o in zip(ids, outs)]

    # ----------------------------------------------------------------------------------------- weights
    # The receiving ends of the weight-sync transports (megatron_rlvr.weight_sync): bucketing, name checks, pausing
    # and the trainer's side of the broadcast live there; these methods only hand one bucket to SGLang.
    def receive_tensors(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """Load one bucket of (DLC parameter name, tensor): CUDA-IPC / shared-memory handles, same host only."""
        self._check_stacks(name for name, _ in bucket)
        if self.server_urls:
            self._call("update_weights_from_tensor", remote.update_weights_from_tensor, self.server_urls, bucket)
            return
        res = self._call("update_weights_from_tensor", self._engine.update_weights_from_tensor, bucket,
                         flush_cache=False)
        _raise_unless_ok("update_weights_from_tensor", res)

    def _check_stacks(self, names) -> None:
        """A memory weight for the policy-only model is refused here, in one line, before it reaches SGLang (whose
        loader would fail inside the scheduler)."""
        if self.policy_only:
            bad = next((n for n in names if n.startswith("memory.")), None)
            if bad is not None:
                raise SGLangEngineError(
                    f"weight {bad!r} is a memory weight, but this engine serves the policy-only model (the run has "
                    "dlc.enabled=false, so there is no memory stack); push the policy alone")

    def weight_group_ranks(self) -> list[int]:
        """Ranks each attached server brings to a weight-sync group: one per GPU process that holds weights."""
        if not self.server_urls:
            raise SGLangEngineError("a weight-sync group is for attached servers (rollout.server_urls); an "
                                    "in-process engine receives tensors directly")
        return [self._call("server_info", remote.weight_ranks, u) for u in self.server_urls]

    def join_weight_group(self, address: str, port: int, world_size: int, group_name: str, backend: str) -> None:
        """Every attached server's ranks join the group (server k after the earlier servers' ranks, rank 0 being
        the trainer); blocks until the rendezvous completes, so call it while the trainer joins too."""
        ranks = self.weight_group_ranks()
        offsets = [1 + sum(ranks[:k]) for k in range(len(ranks))]
        remote.post_each(self.server_urls, "init_weights_update_group", [dict(
            master_address=address, master_port=port, rank_offset=off, world_size=world_size,
            group_name=group_name, backend=backend) for off in offsets])

    def receive_broadcast(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                          group_name: str) -> None:
        """Every attached server receives one bucket broadcast from group rank 0 (blocks until received)."""
        self._check_stacks(names)
        body = dict(names=names, dtypes=dtypes, shapes=shapes, group_name=group_name, flush_cache=False)
        if self.server_urls:
            remote.post_all(self.server_urls, "update_weights_from_distributed", body)
            return
        res = self._engine.update_weights_from_distributed(names, dtypes, shapes, group_name, flush_cache=False)
        _raise_unless_ok("update_weights_from_distributed", res)

    # ----------------------------------------------------------------------------------------- control
    def pause_generation(self) -> None:
        """Stop scheduling; running requests are retracted to the queue (their KV may then be flushed)."""
        if self.server_urls:
            remote.post_all(self.server_urls, "pause_generation", {"mode": "retract"})
            return
        from sglang.srt.managers.io_struct import PauseGenerationReqInput

        tm = self._engine.tokenizer_manager
        # A lambda, so that no coroutine is created when the liveness check in _call fails first.
        self._call("pause_generation", lambda: self._engine.loop.run_until_complete(
            tm.pause_generation(PauseGenerationReqInput(mode="retract"))))

    def continue_generation(self) -> None:
        if self.server_urls:
            remote.post_all(self.server_urls, "continue_generation", {})
            return
        if self._engine is None or self._failure is not None:
            return  # nothing to resume; the error that got us here is already propagating
        from sglang.srt.managers.io_struct import ContinueGenerationReqInput

        tm = self._engine.tokenizer_manager
        self._engine.loop.run_until_complete(tm.continue_generation(ContinueGenerationReqInput()))

    def flush_cache(self) -> None:
        """Drop the radix (prefix) cache: cached KV belongs to the weights it was computed with."""
        if self.server_urls:
            remote.post_all(self.server_urls, "flush_cache", None)
            return
        res = self._call("flush_cache", self._engine.flush_cache)
        if not getattr(res, "success", True):
            raise SGLangEngineError(f"SGLang flush_cache failed: {getattr(res, 'message', res)}")

    def release_memory(self) -> bool:
        """Colocated placement: free the engine's GPU memory (weights + KV) for training (True). No-op otherwise."""
        if self.placement != "colocated" or self.device != "cuda" or self._released:
            return False
        if self.server_urls:
            remote.post_all(self.server_urls, "release_memory_occupation", {})
        else:
            self._call("release_memory_occupation", self._engine.release_memory_occupation)
        self._released = True
        return True

    def resume_memory(self) -> None:
        """Re-occupy the memory freed by `release_memory` (weights must be pushed again if they changed)."""
        if not self._released:
            return
        if self.server_urls:
            remote.post_all(self.server_urls, "resume_memory_occupation", {})
        else:
            self._call("resume_memory_occupation", self._engine.resume_memory_occupation)
        self._released = False


def _group_size(ids: list) -> int:
    """G of a call whose prompts come in runs of G equal prompts (as the rollout stage sends them), else 1: the
    servers then get whole groups, whose shared prompt the radix cache prefills once."""
    g = next((i for i, p in enumerate(ids) if p != ids[0]), len(ids))
    runs_ok = len(ids) % g == 0 and all(ids[i] == ids[i - i % g] for i in range(len(ids)))
    return g if runs_ok else 1


def _log_child_failure(signum=None, frame=None) -> None:
    """Launch-phase SIGQUIT from a failing SGLang child: SGLang's default kills this whole process tree (the
    trainer included); logging is enough, since the launch itself then raises and becomes SGLangEngineError."""
    logger.error("an SGLang child process failed during start-up (SIGQUIT); see the SGLang log above")


def _raise_unless_ok(what: str, res) -> None:
    """SGLang's control calls return (success, message[, ...]) tuples or objects with .success."""
    ok, msg = True, ""
    if isinstance(res, tuple) and res and isinstance(res[0], bool):
        ok, msg = res[0], (res[1] if len(res) > 1 else "")
    elif hasattr(res, "success"):
        ok, msg = bool(res.success), getattr(res, "message", "")
    if not ok:
        raise SGLangEngineError(f"SGLang {what} failed: {msg}")


def _kill_trees(pids: list[int], timeout_s: float = 60.0) -> None:
    """SIGTERM each process and its descendants, SIGKILL whatever is left after `timeout_s`."""
    import psutil

    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += root.children(recursive=True) + [root]
        except psutil.Error:
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited but is not yet reaped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True
