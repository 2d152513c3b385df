"""Rollout stage, SGLang engine: the `RolloutEngine` of rollout.engine=sglang (DLC inside SGLang).

    engine = SGLangEngine(model_path, policy_shape=P, memory_shape=M)          # in-process sglang.Engine
    engine = SGLangEngine(server_urls=["http://10.0.0.5:30000"], ...)          # attach to running servers
    gens = engine.generate(prompts, SamplingParams(lam=0.5, ...))             # Generation records
    engine.update_weights("policy", hf_named_tensors)                          # after each training step
    engine.connect_weight_sync()        # servers on other hosts: later updates travel over NCCL (gloo on CPU)
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
import socket
import threading
from typing import Any, Iterable, Optional, Sequence

import torch

from megatron_rlvr.models.presets import Qwen3Shape
from megatron_rlvr.rollout.sglang import remote
from megatron_rlvr.rollout.sglang.protocol import (
    ARCHITECTURE, MEMORY_CONFIG_KEY, MODEL_PACKAGE, MODEL_PREFIXES, OUT_STATS, PARAM_LAM, PARAM_SEED, PARAM_TAU,
    SAMPLER_BACKEND, STAT_ENTROPY, STAT_LOGPROB_CAL, STAT_LOGPROB_POLICY, check_stack_compat,
)
from megatron_rlvr.rollout.sglang.weights import buckets, prefixed
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
    args: dict[str, Any] = dict(model_path=model_path, skip_tokenizer_init=True, enable_custom_logit_processor=True,
                                device=device, custom_sigquit_handler=_log_child_failure)
    if device == "cpu":
        args.update(CPU_DEFAULTS)
    else:
        args.update(GPU_DEFAULTS, sampling_backend=SAMPLER_BACKEND, enable_memory_saver=placement == "colocated")
    args.update(extra)
    return args


class SGLangEngineError(RuntimeError):
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


def check_model_dir(model_path: str) -> None:
    """Fail fast, before SGLang spawns anything, if `model_path` is not a DLC model folder."""
    cfg_path = os.path.join(model_path, "config.json")
    if not os.path.isfile(cfg_path):
        raise SGLangEngineError(f"{cfg_path} not found: SGLangEngine needs the folder written by build_model_dir")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("architectures") != [ARCHITECTURE] or not isinstance(cfg.get(MEMORY_CONFIG_KEY), dict):
        raise SGLangEngineError(
            f"{cfg_path} is not a DLC model config (architectures={cfg.get('architectures')}, "
            f"{MEMORY_CONFIG_KEY} {'present' if MEMORY_CONFIG_KEY in cfg else 'missing'}); build it with "
            "build_model_dir(policy_shape, memory_shape, ...)")
    try:
        check_stack_compat(cfg, cfg[MEMORY_CONFIG_KEY])
    except ValueError as e:
        raise SGLangEngineError(f"{cfg_path}: {e}") from e


class SGLangEngine:
    """RolloutEngine backed by SGLang serving the DLC model (policy + memory stacks, fused DLC sampler).

    Args:
        model_path: folder from `build_model_dir` (in-process mode; ignored when `server_urls` is given).
        server_urls: attach to running SGLang servers (started with `remote.server_command`) instead.
        policy_shape, memory_shape: Qwen3 shapes, used to check weight names in `update_weights`.
        placement: "colocated" (release/resume GPU memory around training) or "dedicated".
        weight_bucket_mb: size of one weight-update message.
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
        weight_bucket_mb: int = 512,
        sglang: Optional[dict] = None,
        device: Optional[str] = None,
    ) -> None:
        if placement not in ("colocated", "dedicated"):
            raise ValueError(f"placement must be colocated or dedicated, got {placement!r}")
        if weight_bucket_mb < 1:
            raise ValueError(f"weight_bucket_mb must be >= 1, got {weight_bucket_mb}")
        self.shapes = {"policy": policy_shape, "memory": memory_shape}
        self.placement = placement
        self.bucket_bytes = int(weight_bucket_mb) << 20
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._engine = None
        self._failure: Optional[str] = None
        self._released = False
        self._sync_group = None  # (process group, group name) once connect_weight_sync has run
        self.server_urls = [u.rstrip("/") for u in server_urls]
        if self.server_urls:
            remote.check_servers(self.server_urls)
        else:
            if model_path is None:
                raise ValueError("SGLangEngine needs model_path (a build_model_dir folder) or server_urls")
            self._start(str(model_path), dict(sglang or {}))

    @classmethod
    def from_config(cls, cfg, model_path: Optional[str] = None, dtype: Optional[str] = None) -> "SGLangEngine":
        """Build from a RunConfig: rollout.{server_urls, placement, weight_bucket_mb, sglang}, both shapes.

        `dtype` (the resolved `rollout.dtype`) is the engine's compute dtype unless rollout.sglang names one.
        """
        r = cfg.rollout
        sglang = dict(r.sglang)
        if dtype is not None:
            sglang.setdefault("dtype", dtype)
        return cls(model_path, server_urls=list(r.server_urls), policy_shape=cfg.policy.shape(),
                   memory_shape=cfg.memory.shape(), placement=r.placement, weight_bucket_mb=r.weight_bucket_mb,
                   sglang=sglang)

    # ----------------------------------------------------------------------------------------- lifecycle
    def _start(self, model_path: str, extra: dict) -> None:
        if extra.get("load_format") != "dummy" or os.path.isdir(model_path):
            check_model_dir(model_path)
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
        if self._engine is not None:
            try:
                self._engine.shutdown()
            finally:
                self._engine = None

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
        params = [sglang_sampling_params(sampling, request_seed(sampling.seed, i)) for i in range(len(prompts))]
        ids = [[int(t) for t in p] for p in prompts]
        if self.server_urls:
            outs = self._call("generate", remote.generate, self.server_urls, ids, params)
        else:
            from megatron_rlvr.rollout.sglang.sampler import DLCRequestParams

            carrier = DLCRequestParams().to_str()
            outs = self._call("generate", self._engine.generate, input_ids=ids, sampling_params=params,
                              custom_logit_processor=[carrier] * len(ids))
        return [to_generation(p, o) for p, o in zip(ids, outs)]

    # ----------------------------------------------------------------------------------------- weights
    def update_weights(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights of "policy" or "memory" (HF Qwen3 names) into the running engine, bucketed.

        Generation is paused (running requests are retracted) and the prefix cache is flushed afterwards, since
        cached KV was computed with the old weights.
        """
        if model not in MODEL_PREFIXES:
            raise ValueError(f"model must be one of {MODEL_PREFIXES}, got {model!r}")
        if self._sync_group is not None:
            group, name = self._sync_group
            self.update_weights_from_distributed(model, named_tensors, group, name)
            return
        self.pause_generation()
        try:
            for bucket in buckets(prefixed(model, named_tensors, self.shapes[model]), self.bucket_bytes):
                if self.server_urls:
                    self._call("update_weights_from_tensor", remote.update_weights_from_tensor, self.server_urls,
                               bucket)
                else:
                    res = self._call("update_weights_from_tensor", self._engine.update_weights_from_tensor,
                                     bucket, flush_cache=False)
                    _raise_unless_ok("update_weights_from_tensor", res)
            self.flush_cache()
        finally:
            self.continue_generation()

    def connect_weight_sync(self, master_address: Optional[str] = None, backend: Optional[str] = None,
                            group_name: Optional[str] = None, timeout_s: float = 600.0) -> None:
        """Attached servers on other hosts: make every later `update_weights` a broadcast over a process group.

        Tensor handles (the default path to attached servers) only work on the same host. Here this process joins a
        new group as rank 0 and server k's tensor-parallel ranks take the ranks after the earlier servers'. NCCL
        when this process has a GPU (the pushed tensors must then be on it), gloo otherwise. `master_address` must
        be reachable from the servers: default $MASTER_ADDR (the launcher sets it to the first training node),
        else this host's name.
        """
        if not self.server_urls:
            raise SGLangEngineError("connect_weight_sync is for attached servers (rollout.server_urls); an in-process "
                                    "engine receives tensors directly")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        address = master_address or os.environ.get("MASTER_ADDR") or socket.gethostname()
        with socket.socket() as sock:  # a free port on this host for the group's rendezvous
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        # A fresh name per connection: servers outlive trainers (a resumed run connects again), and a name the
        # server still holds belongs to the dead trainer's group.
        group_name = group_name or f"dlc_weight_sync_{socket.gethostname()}_{os.getpid()}_{port}"
        sizes = [remote.tp_size(u) for u in self.server_urls]
        world = 1 + sum(sizes)
        errors: list[str] = []

        def join(url: str, rank_offset: int) -> None:
            try:
                remote.post(url, "init_weights_update_group", dict(
                    master_address=address, master_port=port, rank_offset=rank_offset, world_size=world,
                    group_name=group_name, backend=backend))
            except Exception as e:  # reported below, after the rendezvous gave up or completed
                errors.append(str(e))

        threads = [threading.Thread(target=join, args=(u, 1 + sum(sizes[:k])), daemon=True)
                   for k, u in enumerate(self.server_urls)]
        for t in threads:
            t.start()
        try:
            group = remote.trainer_weight_sync_group(address, port, world, group_name, backend, timeout_s)
        except Exception as e:
            raise SGLangEngineError(
                f"weight-sync group with {self.server_urls} failed at {address}:{port} ({backend}): {e}; "
                f"{errors or 'no server reported an error'}. The servers must reach this host at that address "
                "(set MASTER_ADDR to an address they can reach)") from e
        finally:
            for t in threads:
                t.join(timeout=timeout_s)
        if errors:
            raise SGLangEngineError(f"SGLang servers could not join the weight-sync group: {errors}")
        self._sync_group = (group, group_name)
        logger.info("weight sync: %s group of %d ranks via %s:%d", backend, world, address, port)

    def update_weights_from_distributed(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]],
                                        group, group_name: str = "dlc_weight_sync") -> None:
        """Push weights over the NCCL group: the engine receives while this (trainer rank 0) broadcasts.

        `group` is the trainer's handle of the group (see `connect_weight_sync`); tensors must be on
        the trainer's GPU. Bucketed like `update_weights`; generation paused and caches flushed around it.
        """
        import torch.distributed as dist

        self.pause_generation()
        try:
            for bucket in buckets(prefixed(model, named_tensors, self.shapes[model]), self.bucket_bytes):
                names = [n for n, _ in bucket]
                dtypes = [str(t.dtype).replace("torch.", "") for _, t in bucket]
                shapes = [list(t.shape) for _, t in bucket]
                result: dict = {}

                def receive():
                    try:
                        if self.server_urls:
                            remote.post_all(self.server_urls, "update_weights_from_distributed", dict(
                                names=names, dtypes=dtypes, shapes=shapes, group_name=group_name,
                                flush_cache=False))
                        else:
                            result["res"] = self._engine.update_weights_from_distributed(
                                names, dtypes, shapes, group_name, flush_cache=False)
                    except Exception as e:  # re-raised in the caller's thread
                        result["err"] = e

                th = threading.Thread(target=receive, daemon=True)
                th.start()
                for _, t in bucket:
                    dist.broadcast(t.contiguous(), src=0, group=group)
                th.join()
                if "err" in result:
                    raise SGLangEngineError(f"update_weights_from_distributed failed: {result['err']}")
                if "res" in result:
                    _raise_unless_ok("update_weights_from_distributed", result["res"])
            self.flush_cache()
        finally:
            self.continue_generation()

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

    def release_memory(self) -> None:
        """Colocated placement: free the engine's GPU memory (weights + KV) for training. No-op otherwise."""
        if self.placement != "colocated" or self.device != "cuda" or self._released:
            return
        if self.server_urls:
            remote.post_all(self.server_urls, "release_memory_occupation", {})
        else:
            self._call("release_memory_occupation", self._engine.release_memory_occupation)
        self._released = True

    def resume_memory(self) -> None:
        """Re-occupy the memory freed by `release_memory` (weights must be pushed again if they changed)."""
        if not self._released:
            return
        if self.server_urls:
            remote.post_all(self.server_urls, "resume_memory_occupation", {})
        else:
            self._call("resume_memory_occupation", self._engine.resume_memory_occupation)
        self._released = False


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
