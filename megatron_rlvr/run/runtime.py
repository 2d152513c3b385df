"""Run set-up and tear-down around the training loop: process groups, run folder, models, engine, resume, export.

Everything here is plumbing the loop in `megatron_rlvr.train` calls once; the loop itself reads as the algorithm.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from megatron_rlvr.checkpoint import store as ckpt
from megatron_rlvr.config import OptimConfig, RunConfig, check_world_size
from megatron_rlvr.errors import PREEMPTED_EXIT_CODE, RunError
from megatron_rlvr.qwen3.model_info import MODEL_INFO

if TYPE_CHECKING:  # annotations only: importing them here would pull Megatron-Core in at start-up
    from megatron_rlvr.distributed.parallel import ParallelContext
    from megatron_rlvr.rollout.engine import RolloutEngine
    from megatron_rlvr.rollout.layout import RolloutLayout
    from megatron_rlvr.tasks import PromptSampler, Task
    from megatron_rlvr.update.trainable import TrainableModel
    from megatron_rlvr.weight_sync import WeightTransport
from megatron_rlvr.run import guard as run_guard


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def log(msg: str) -> None:
    if is_rank0():
        print(msg, flush=True)


@dataclass
class Run:
    """What the loop needs: config, run folder, parallel context, task, data position, models, engine."""

    cfg: RunConfig
    run_dir: Path
    ctx: ParallelContext
    task: Optional[Task] = None
    sampler: Optional[PromptSampler] = None
    models: dict[str, TrainableModel] = field(default_factory=dict)  # "policy", "memory"
    reference: Optional[TrainableModel] = None  # frozen initial policy, only when algorithm.kl_coef > 0
    engine: Optional[RolloutEngine] = None  # this rank's rollout engine (None where it hosts none)
    engine_dtype: torch.dtype = torch.float32  # what the rollout engine computes in (`rollout.dtype`)
    layout: Optional[RolloutLayout] = None  # which ranks host engines
    transport: Optional[WeightTransport] = None  # weight sync into this rank's engine (None where it hosts none)
    engine_restarts: int = 0  # restarts of dead engines so far (any rank's), reported as rollout/engine_restarts
    engine_restarted: bool = False  # this rank's engine was rebuilt and still needs both models' weights
    kv_pool_tokens: Optional[int] = None  # KV capacity of this rank's first engine (SGLang), to judge restarts by
    start_step: int = 0
    source: "RolloutSource" = None  # where each step's rollouts come from (`cfg.mode`, chosen once in `setup`)
    trains: bool = True  # whether the models are updated (False for mode rollout_only)
    stop: run_guard.StopSignals = field(default_factory=run_guard.StopSignals)  # SIGTERM/SIGUSR1 requests

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def build_model(self, name: str, optim: Optional[OptimConfig]):
        from megatron_rlvr.update.trainable import TrainableModel

        # The frozen KL reference is built like the policy; its optimizer is never stepped.
        optim = optim or self.cfg.optimizer.policy
        return TrainableModel(name, getattr(self.cfg, name), optim, self.ctx)

    def trainer_state(self, step: int) -> dict:
        return {"step": step, "sampler": self.sampler.state_dict(), "rng": ckpt.rng_state(),
                "world_size": dist.get_world_size() if dist.is_initialized() else 1}

    def save(self, step: int) -> Path:
        return ckpt.save_checkpoint(self.ckpt_root, step, self.models, self.trainer_state(step),
                                    self.cfg.to_yaml(), tokenizer=self.task.tokenizer,
                                    keep_last=self.cfg.checkpoint.keep_last, verify=self.cfg.checkpoint.verify)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not torch.cuda.is_available():
        # Bit-identical resume on CPU needs deterministic kernels (the kill -9 / resume test compares exactly).
        torch.use_deterministic_algorithms(True, warn_only=True)


def quiet_library_warnings() -> None:
    """Megatron-Core and torch warn about optional fused kernels (Apex, TE) at every model build; on a CPU run
    those are expected and drown the progress display."""
    import warnings

    for pattern in ("Apex is not installed", ".*[Tt]ransformer[ _-]?[Ee]ngine.*", ".*deprecated.*",
                    ".*torch.distributed.*", ".*TypedStorage.*", ".*not supported on CPU.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\..*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def prompt_budget(cfg: RunConfig) -> tuple[int, str]:
    """The longest prompt a rollout can take: the models' context minus the tokens a response may add."""
    from megatron_rlvr.qwen3.shapes import get_preset

    names = ["policy"] + (["memory"] if cfg.dlc.enabled else [])
    context = min(get_preset(getattr(cfg, n).preset).max_position_embeddings for n in names)
    return context - cfg.rollout.max_new_tokens, (f"the models' context of {context} positions minus "
                                                   f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}")


def setup(cfg: RunConfig) -> Run:
    """Process groups, run folder with the resolved config, task and prompt sampler."""
    quiet_library_warnings()
    from megatron_rlvr.distributed.parallel import init_distributed
    from megatron_rlvr.tasks import build_task
    from megatron_rlvr.tasks.base import PromptSampler

    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_world_size(cfg, world)
    run_dir = Path(cfg.run_dir).expanduser()
    stop = run_guard.StopSignals().install()  # from here on, SIGTERM/SIGUSR1 end the run with a checkpoint
    if os.environ.get("RANK", "0") == "0":
        # Before any rendezvous: a second `train` on this run_dir fails at once (torchrun stops its other ranks).
        run_guard.lock_run_dir(run_dir)
        for stale in ckpt.clean_stale_tmp(run_dir / "checkpoints"):
            log(f"removed the unfinished checkpoint folder {stale} of an earlier process")
    ctx = init_distributed(cfg)
    seed_everything(cfg.seed)
    if is_rank0():
        run_dir.mkdir(parents=True, exist_ok=True)
    task = build_task(cfg.task, *prompt_budget(cfg))
    if is_rank0():
        from megatron_rlvr.tasks.inspect import write_first_prompt

        write_first_prompt(task, run_dir)  # what the model sees, for the user to check
    return Run(cfg=cfg, run_dir=run_dir, ctx=ctx, task=task, sampler=PromptSampler(task, cfg.seed), stop=stop,
               source=rollout_source(cfg), trains=cfg.mode != "rollout_only")


class EngineRollouts:
    """Each step's rollouts generated by the engines (modes `full` and `rollout_only`), dead engines restarted."""

    live = True  # the engines hold the trainer's weights: push after every update, check the step-0 log-prob gap

    def __call__(self, run: Run, step: int):
        from megatron_rlvr.reward import collect_rollouts

        position = run.sampler.state_dict()
        return with_engine_restarts(
            run, step, "rollout", lambda: collect_rollouts(run.engine, run.sampler, run.task, run.cfg, step,
                                                           run.layout),
            rewind=lambda: run.sampler.load_state_dict(position))


class ReplayRollouts:
    """Each step's rollouts read back from an earlier run's `logging.save_rollouts` folder (mode `train_only`):
    no engine is built and no weights are pushed."""

    live = False

    def __init__(self, replay_dir: str):
        self.replay_dir = replay_dir

    def __call__(self, run: Run, step: int):
        from megatron_rlvr.rollout.types import RolloutBatch

        return RolloutBatch.load(f"{self.replay_dir}/step_{step:06d}.pt")


RolloutSource = Union[EngineRollouts, ReplayRollouts]


def rollout_source(cfg: RunConfig) -> RolloutSource:
    """The run mode as a rollout source, decided here once: replay for `train_only`, the engines otherwise."""
    return ReplayRollouts(cfg.replay_dir) if cfg.mode == "train_only" else EngineRollouts()


def build_models(run: Run) -> None:
    """Policy (+ memory) with their RL optimizers; weights from a resumed checkpoint, `init_from`, or the (cached)
    warm start, in that order of precedence."""
    from megatron_rlvr.run.warm_start import ensure_warm_start

    cfg = run.cfg
    names = ["policy"] + (["memory"] if cfg.dlc.enabled else [])
    resume = ckpt.find_checkpoint(run.ckpt_root, cfg.checkpoint.load)
    state = None
    if resume is not None and (resume / "trainer_state.pt").is_file():
        # Checked before any model is built: a resume that cannot be exact fails in seconds, with one line.
        state = ckpt.load_trainer_state(resume)
        run_guard.check_resume_step(cfg, resume, state["step"])
        run_guard.check_config_change(cfg, resume, state["step"], run.run_dir)
    if is_rank0():
        (run.run_dir / "config.yaml").write_text(cfg.to_yaml())  # after the checks: a refused resume keeps it
    warm = None if resume is not None else ensure_warm_start(cfg, run.task, run.build_model, log)
    for name in names:
        run.models[name] = run.build_model(name, getattr(cfg.optimizer, name))
    if state is not None:
        for name in names:
            try:
                run.models[name].load_checkpoint(resume / name, load_optimizer=True)
            except (Exception, CheckpointException) as err:  # damaged, without integrity record: name it
                raise RunError(f"loading {resume / name} failed ({type(err).__name__}: {str(err)[:160]}); the "
                               "checkpoint is damaged or incomplete; fix: point checkpoint.load at an earlier "
                               "iter folder, or start over with checkpoint.load=none") from err
        run.sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
        run.start_step = state["step"]
        log(f"resumed from {resume} at step {run.start_step}")
    else:
        for name in names:
            if getattr(cfg, name).init_from:
                continue  # TrainableModel loaded it at construction
            src = None
            if resume is not None and name == "policy" and (resume / MODEL_INFO).is_file():
                src = resume  # one model folder (`convert from-hf --out DIR`) given as checkpoint.load=DIR
            elif resume is not None and (resume / name).is_dir():
                src = resume / name  # a models-only checkpoint (e.g. `convert from-hf` output) as checkpoint.load
            elif warm is not None:
                src = warm / name
            if src is not None:
                run.models[name].load_checkpoint(src, load_optimizer=False)
    if cfg.algorithm.kl_coef > 0:
        # The KL reference is the policy as RL starts (after warm start / init_from), frozen; it is kept in the
        # run folder so a resumed run compares against the same reference.
        ref_dir = run.run_dir / "reference_init"
        if run.start_step == 0 and not (ref_dir / MODEL_INFO).is_file():
            run.models["policy"].save_checkpoint(ref_dir)
        run.reference = run.build_model("policy", None)  # same layout as the policy
        run.reference.load_checkpoint(ref_dir, load_optimizer=False)


def engine_dtype(cfg: RunConfig) -> torch.dtype:
    """The rollout engine's compute dtype: `rollout.dtype`, where auto follows the policy's (resolved) dtype so
    the trainer's recomputed log-probs and the engine's agree (a float32 policy with a bf16 engine gave a step-0
    gap of 3.7e-3 nats per token on an H200, against 0.0 with matching dtypes)."""
    from megatron_rlvr.qwen3.provider import resolve_dtype

    return resolve_dtype(cfg.policy.dtype if cfg.rollout.dtype == "auto" else cfg.rollout.dtype)


def build_engine(run: Run) -> None:
    """This rank's rollout engine, its layout among the ranks (`rollout.layout`), and the weight transport into it.

    Colocated: one engine per `rollout.tp` ranks, hosted by the first of them (on its GPU and the next tp - 1).
    Dedicated servers: one client on rank 0. The transport is chosen here, once (`weight_sync.build_transport`).
    """
    from megatron_rlvr.rollout.layout import RolloutLayout

    cfg = run.cfg
    run.engine_dtype = engine_dtype(cfg)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    run.layout = RolloutLayout(world, tp=cfg.rollout.tp, dedicated=bool(cfg.rollout.server_urls))
    index = run.layout.engine_index(rank)
    if not run.source.live or index is None:
        return
    from megatron_rlvr.registry import ENGINES
    from megatron_rlvr.weight_sync import build_transport

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    # the factory of `rollout.engine` (megatron_rlvr.registry.ENGINES)
    run.engine = ENGINES.load(cfg.rollout.engine)(cfg, engine_index=index, device=device, dtype=run.engine_dtype,
                                                  tokenizer=run.task.tokenizer, run_dir=run.run_dir)
    run.transport = build_transport(run.engine, cfg)
    if run.kv_pool_tokens is None:
        run.kv_pool_tokens = _kv_pool_tokens(run.engine)


@contextmanager
def engine_offloaded(run: Run, timer=None) -> Iterator[None]:
    """Colocated engines give their accelerator memory back while Megatron trains, and take it again after; every
    rank releases its own engine (a no-op for the embedded engine and on CPU). An engine found dead here is left
    for the weight push after the update to report and restart (the update itself does not need it).
    With a `timer` (`run.metrics.PhaseTimer`), the release and the resume count as its phase "release_resume"."""
    from megatron_rlvr.rollout.engine import RolloutEngineError

    engine = run.engine if run.cfg.rollout.placement == "colocated" else None
    phase = (lambda: timer("release_resume")) if timer is not None and engine is not None else nullcontext
    released = False
    try:
        with phase():
            if engine is not None:
                released = bool(engine.release_memory())
    except RolloutEngineError as e:
        print(f"rank {dist.get_rank() if dist.is_initialized() else 0}: rollout engine failed to release its "
              f"memory ({e}); it is restarted at the weight push", flush=True)
        engine = None
    try:
        yield
    finally:
        try:
            with phase():
                if engine is not None:
                    if released:  # an engine that gave nothing back (embedded) needs nothing freed for it
                        release_cached_accelerator_memory()
                    engine.resume_memory()
        except RolloutEngineError as e:
            print(f"rollout engine failed to resume its memory ({e}); it is restarted at the weight push", flush=True)


def with_engine_restarts(run: Run, step: int, what: str, stage, rewind=None, repush: bool = True):
    """Run a collective stage (`stage()`: the step's rollouts, or the weight push); if any rank's engine dies in it,
    rebuild the dead engines, push both models into them again (`repush`; the push stage pushes by itself), undo
    the stage's side effects (`rewind()`: the prompt sampler's position, so the same prompts are redrawn with the
    same seeds) and run it again, at most `rollout.max_engine_restarts` times per stage. Then stop, with the last
    checkpoint intact (nothing is saved from a failed step)."""
    from megatron_rlvr.rollout.engine import EngineDied
    from megatron_rlvr.weight_sync import push_weights

    limit = run.cfg.rollout.max_engine_restarts
    dead_here = False
    for attempt in range(limit + 1):
        try:
            if dead_here:
                _rebuild_engine(run)
                dead_here = False
            if attempt and repush:  # every rank takes part in the gathers; only rebuilt engines receive
                push_weights(run.transport if run.engine_restarted else None, run.models)
            run.engine_restarted = False
            return stage()
        except EngineDied as died:
            if attempt == limit:
                last = ckpt.find_checkpoint(run.ckpt_root, "auto")
                raise RuntimeError(
                    f"step {step}: the rollout engine died during the {what} and {limit} restart(s) did not help "
                    f"({died.cause}); the last checkpoint ({last or 'none yet'}) is intact; fix: check the engine's "
                    "log above (out of memory? a crashed kernel?), then rerun the same command to resume") from died
            run.engine_restarts += 1
            dead_here = died.here
            log(f"step {step}: a rollout engine died during the {what}; restart {attempt + 1}/{limit}")
            if rewind is not None:
                rewind()


def _rebuild_engine(run: Run) -> None:
    for part in (run.transport, run.engine):
        try:
            if part is not None:
                (part.close if part is run.transport else part.shutdown)()
        except Exception:  # a dead engine may fail to shut down cleanly; its processes are gone or going
            pass
    run.engine = run.transport = None
    release_cached_accelerator_memory()  # a new engine sizes its KV pool from the memory free at its start
    build_engine(run)
    run.engine_restarted = True
    first, now = run.kv_pool_tokens, _kv_pool_tokens(run.engine)
    if first and now is not None and now < 0.9 * first:
        # Seen on an H200: memory still held at the restart left the new engine 24 GB free instead of 80 GB; its
        # small KV pool retracted requests for the rest of the run and rollouts ran 3.5x slower, with nothing but
        # SGLang's retraction lines to say why.
        print(f"rank {dist.get_rank() if dist.is_initialized() else 0}: WARNING: the restarted rollout engine's "
              f"KV pool holds {now} tokens, the first engine's {first}: less accelerator memory was free when it "
              "started (held by this process or another one), so rollouts may retract requests and run slower; "
              "fix: free that memory and restart the run from its last checkpoint (resume is exact)", flush=True)


def _kv_pool_tokens(engine) -> Optional[int]:
    """The engine's KV-cache capacity in tokens where it reports one (SGLang), else None; never raises."""
    report = getattr(engine, "kv_pool_tokens", None)
    try:
        return report() if report is not None else None
    except Exception:  # a report that fails must not fail a start or a restart
        return None


def release_cached_accelerator_memory() -> None:
    """Hand the blocks PyTorch's caching allocator keeps reserved (freed activations of the update) back to the
    driver, before a colocated engine takes its memory again: the engine's allocator (torch_memory_saver for
    SGLang) asks the driver, not PyTorch's cache. Measured on an H200 (BENCHMARKS.md, session 9): with 32k-token
    memory-update micro-batches, SGLang's resume ran out of memory without this, the engine was restarted with
    24 GB instead of 80 GB free, and its small KV pool made the next rollouts 3.5x slower. verl and slime empty the
    cache at the same point. A no-op on CPU and before CUDA is initialised."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def stop_preempted(run: Run, step: int) -> int:
    """After a stop signal, at the start of `step`: checkpoint the steps done (unless saved already) and return the
    exit code the launcher maps to a requeue."""
    path = None
    if run.trains and step > run.start_step:
        last = ckpt.find_checkpoint(run.ckpt_root, "auto", verify=False)
        path = last if last is not None and last.name == ckpt.iter_dir_name(step) else run.save(step)
    if run.engine is not None:
        run.engine.shutdown()
    log(f"stopped by {run.stop.name} before step {step}: "
        + (f"checkpoint {path}" if path else "no new step to checkpoint")
        + f"; exit {PREEMPTED_EXIT_CODE}, the same command resumes")
    return PREEMPTED_EXIT_CODE


def finish(run: Run, final_step: int, history: list[dict]) -> None:
    """Final checkpoint, plots, and the Hugging Face export of both models."""
    from megatron_rlvr.run.metrics import write_plots

    cfg = run.cfg
    check_config_unchanged(run)
    last = ckpt.find_checkpoint(run.ckpt_root, "auto", verify=False)
    if run.trains and (last is None or last.name != ckpt.iter_dir_name(final_step)):
        last = run.save(final_step)
    if is_rank0() and cfg.logging.plots:
        path = write_plots(history, run.run_dir / "plots" / "over_sharpening.png",
                           title=f"{cfg.algorithm.estimator} + IAC(alpha={cfg.algorithm.iac_alpha})"
                           + (f" + DLC(lambda={cfg.dlc.lam})" if cfg.dlc.enabled else ""))
        if path:
            log(f"plots: {path}")
    if cfg.checkpoint.export_hf and run.trains and last is not None:
        from megatron_rlvr.convert.to_hf import export_checkpoint

        for name in run.models:
            out = run.run_dir / "hf" / name
            if is_rank0():
                export_checkpoint(last, out, model=name, overwrite=True)
                log(f"hugging face export of the {name}: {out}")
    if run.transport is not None:
        run.transport.close()
    if run.engine is not None:
        run.engine.shutdown()


def check_config_unchanged(run: Run) -> None:
    """The `config.yaml` written at start-up must be the config that ran: nothing may change `run.cfg` during the
    run (a resumed or replayed run reads that file back). Raises InvariantError naming the changed lines."""
    from megatron_rlvr.run.checks import InvariantError

    saved = run.run_dir / "config.yaml"
    if not is_rank0() or not saved.is_file():
        return
    before, now = saved.read_text().splitlines(), run.cfg.to_yaml().splitlines()
    if before != now:
        import difflib

        diff = [d for d in difflib.unified_diff(before, now, "config.yaml", "run.cfg", lineterm="", n=0)][2:12]
        raise InvariantError("the config changed during the run, so config.yaml is not the config that ran: "
                             + "; ".join(diff))
