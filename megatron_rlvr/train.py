"""The RLVR training loop (SPEC 2.6, the paper's Algorithm 1), read top to bottom:

    prompts -> rollout from pi_cal = softmax((z_policy - lambda * z_memory) / T), G per prompt (DLC)
            -> verifier rewards (+ DAPO shaping / dynamic sampling)
            -> advantages (estimator, then IAC)
            -> policy update (PPO epochs over micro-batches, under Megatron-Core)
            -> memory update (cross-entropy on the same rollouts)
            -> weight push of both models to every rollout engine
            -> metrics, checkpoint
"""

from __future__ import annotations

from megatron_rlvr.advantage import assign_advantages
from megatron_rlvr.config import RunConfig
from megatron_rlvr.eval.diversity import rollout_diversity
from megatron_rlvr.eval.heldout import Evaluator
from megatron_rlvr.eval.rollout_stats import rollout_metrics
from megatron_rlvr.reward.collect import collect_rollouts
from megatron_rlvr.rollout.types import RolloutBatch
from megatron_rlvr.run import runtime
from megatron_rlvr.run.checks import check_logprob_gap, check_step0_ppo_kl, logprob_gap
from megatron_rlvr.run.metrics import MetricsLogger, PhaseTimer
from megatron_rlvr.run.progress import StepProgress
from megatron_rlvr.update import recompute_logprobs, update_memory, update_policy
from megatron_rlvr.weight_sync import push_weights


def main(cfg: RunConfig) -> int:
    run = runtime.setup(cfg)
    runtime.build_models(run)
    runtime.build_engine(run)
    policy, memory = run.models["policy"], run.models.get("memory")
    a, T = cfg.algorithm, cfg.rollout.temperature
    if cfg.mode != "train_only":
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
            with timer("rollout"):
                if cfg.mode == "train_only":
                    batch = RolloutBatch.load(f"{cfg.replay_dir}/step_{step:06d}.pt")
                else:
                    position = run.sampler.state_dict()
                    batch = runtime.with_engine_restarts(
                        run, step, "rollout", lambda: collect_rollouts(run.engine, run.sampler, run.task, cfg, step,
                                                                       run.layout),
                        rewind=lambda: run.sampler.load_state_dict(position))
                if cfg.logging.save_rollouts and runtime.is_rank0():
                    (run.run_dir / "rollouts").mkdir(exist_ok=True)
                    batch.save(run.run_dir / "rollouts" / f"step_{step:06d}.pt")
            metrics = rollout_metrics(batch)
            metrics.update(rollout_diversity(batch, run.task))  # answer entropy, solution diversity
            metrics.update(run.task.pop_stats())  # verifier timeouts / errors of this step
            if cfg.mode != "rollout_only":
                with timer("advantage"):
                    metrics.update(assign_advantages(batch, a))
                with timer("logprob_recompute"):
                    old_lp, entropy = recompute_logprobs(policy, batch, T, a.micro_batch_size, with_entropy=True,
                                                         algo=a)
                    ref_lp = None
                    if run.reference is not None:
                        ref_lp, _ = recompute_logprobs(run.reference, batch, T, a.micro_batch_size, algo=a)
                mask = batch.response_mask
                metrics["policy/entropy"] = float(entropy[mask].mean())
                metrics["rollout/logprob_abs_diff"] = logprob_gap(old_lp, batch.logprob_rollout_policy, mask)
                if step == run.start_step and cfg.mode == "full":
                    # The first step of this process: the engine has just received the trainer's weights.
                    check_logprob_gap(metrics["rollout/logprob_abs_diff"], cfg.checks.logprob_gap, policy.dtype,
                                      run.engine_dtype, cfg.checks.logprob_gap_tolerance, runtime.log)
                with runtime.engine_offloaded(run):  # colocated SGLang frees its GPU memory meanwhile
                    with timer("policy_update"):
                        metrics.update(update_policy(policy, batch, old_lp, cfg, step, ref_logprobs=ref_lp))
                    if step == 0:
                        check_step0_ppo_kl(metrics["policy/ppo_kl_before_update"])
                    if memory is not None:
                        with timer("memory_update"):
                            metrics.update(update_memory(memory, batch, cfg))
                with timer("weight_push"):
                    if cfg.mode != "train_only":
                        metrics["sync/bytes"] = runtime.with_engine_restarts(
                            run, step, "weight push", lambda: push_weights(run.transport, run.models), repush=False)
                        metrics["rollout/engine_restarts"] = float(run.engine_restarts)
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
            if cfg.mode != "rollout_only" and every and (step + 1) % every == 0 and step + 1 < cfg.steps:
                run.save(step + 1)
        step = cfg.steps
    runtime.finish(run, step, logger.history)
    logger.close()
    if evaluate.history and runtime.is_rank0():
        runtime.log(evaluate.table())  # the paper's AVG@8 / PASS@8 table of the last evaluation
    runtime.log(f"done: {cfg.steps} steps; metrics in {run.run_dir / 'metrics.jsonl'}")
    return 0
