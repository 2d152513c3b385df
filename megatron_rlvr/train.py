"""The RLVR training loop (the paper's Algorithm 1; docs/ALGORITHMS.md), read top to bottom:

    prompts -> rollout from pi_cal = softmax((z_policy - lambda * z_memory) / T), G per prompt (DLC)
            -> verifier rewards (+ DAPO shaping / dynamic sampling)
            -> advantages (estimator, then IAC)
            -> policy update (PPO epochs over micro-batches, under Megatron-Core)
            -> memory update (cross-entropy on the same rollouts)
            -> weight push of both models to every rollout engine
            -> metrics, checkpoint
"""

from __future__ import annotations

from megatron_rlvr.config import RunConfig
from megatron_rlvr.eval.heldout import Evaluator
from megatron_rlvr.run import runtime
from megatron_rlvr.run.metrics import MetricsLogger, PhaseTimer
from megatron_rlvr.run.progress import StepProgress
from megatron_rlvr.step import rl_step
from megatron_rlvr.weight_sync import push_weights


def main(cfg: RunConfig) -> int:
    run = runtime.setup(cfg)  # also picks the rollout source (cfg.mode): the engines, or a replay
    runtime.build_models(run)
    runtime.build_engine(run)
    if run.source.live:
        push_weights(run.transport, run.models)
    logger = MetricsLogger(run.run_dir, cfg, enabled=runtime.is_rank0(), resume_step=run.start_step)
    evaluate = Evaluator(run, write=runtime.is_rank0())  # the policy alone (lambda = 0) on eval.sets
    step = run.start_step
    with StepProgress(cfg.steps, run.start_step, enabled=cfg.logging.progress and runtime.is_rank0()) as bar:
        for step in range(run.start_step, cfg.steps):
            if run.stop.requested():  # SIGTERM/SIGUSR1 (preemption): checkpoint the steps done, exit for requeue
                code = runtime.stop_preempted(run, step)
                logger.close()
                return code
            timer = PhaseTimer()
            metrics, batch = rl_step(run, step, timer)  # rollout -> advantage -> update -> weight push
            if cfg.eval.interval and ((step + 1) % cfg.eval.interval == 0 or step + 1 == cfg.steps):
                with timer("eval"):
                    # on rank 0's engine only: rank 0 logs, and the other ranks' engines would repeat the work
                    metrics.update(evaluate(run.engine if runtime.is_rank0() else None, step))
            metrics.update(timer.as_metrics())
            metrics["throughput/rollout_tokens_per_s"] = metrics["rollout/tokens"] / max(timer.times["rollout"], 1e-9)
            train_time = timer.times.get("policy_update", 0.0) + timer.times.get("logprob_recompute", 0.0)
            if train_time > 0:
                metrics["throughput/train_tokens_per_s"] = float(batch.tokens.numel()) / train_time
            bar.advance(logger.log(step, metrics))
            every = cfg.checkpoint.save_interval
            if run.trains and every and (step + 1) % every == 0 and step + 1 < cfg.steps:
                run.save(step + 1)
        step = cfg.steps
    runtime.finish(run, step, logger.history)
    logger.close()
    if evaluate.history and runtime.is_rank0():
        runtime.log(evaluate.table())  # the paper's AVG@8 / PASS@8 table of the last evaluation
    runtime.log(f"done: {cfg.steps} steps; metrics in {run.run_dir / 'metrics.jsonl'}")
    return 0
