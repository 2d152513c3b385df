"""One RL step, the body of the paper's Algorithm 1 (docs/ALGORITHMS.md), shared by the training loop
(`megatron_rlvr.train`) and the benchmarks (`megatron_rlvr.bench.train`), so what is timed is what trains:

    rollouts of the step (the run's rollout source: the engines, or a replay of saved rollouts)
      -> advantages (estimator, then IAC)
      -> log-prob recompute (policy; the frozen reference when algorithm.kl_coef > 0), policy update (PPO), memory
         update (cross-entropy), all three with colocated engines' memory released
      -> weight push of both models to the engines (live sources only)

Each phase runs under `timer(name)`; the returned metrics are the step's statistics (timings are the caller's:
`timer.as_metrics()`).
"""

from __future__ import annotations

from megatron_rlvr.advantage import assign_advantages
from megatron_rlvr.eval.diversity import rollout_diversity
from megatron_rlvr.eval.rollout_stats import rollout_metrics
from megatron_rlvr.rollout.types import RolloutBatch
from megatron_rlvr.run import runtime
from megatron_rlvr.run.checks import check_logprob_gap, check_step0_ppo_kl, logprob_gap
from megatron_rlvr.run.metrics import PhaseTimer
from megatron_rlvr.update import recompute_logprobs, update_memory, update_policy
from megatron_rlvr.weight_sync import push_weights


def rl_step(run: runtime.Run, step: int, timer: PhaseTimer) -> tuple[dict[str, float], RolloutBatch]:
    """Run step `step` of `run` (rollouts, and with `run.trains` the updates and the weight push); returns its
    metrics and its rollout batch."""
    cfg = run.cfg
    a, T = cfg.algorithm, cfg.rollout.temperature
    policy, memory = run.models["policy"], run.models.get("memory")
    with timer("rollout"):
        batch = run.source(run, step)
        if cfg.logging.save_rollouts and runtime.is_rank0():
            (run.run_dir / "rollouts").mkdir(exist_ok=True)
            batch.save(run.run_dir / "rollouts" / f"step_{step:06d}.pt")
    metrics = rollout_metrics(batch)
    metrics.update(rollout_diversity(batch, run.task))  # answer entropy, solution diversity
    metrics.update(run.task.pop_stats())  # verifier timeouts / errors of this step
    if not run.trains:
        return metrics, batch
    with timer("advantage"):
        metrics.update(assign_advantages(batch, a))
    # Colocated engines give their GPU memory back from here to the weight push: the recompute is training-side work
    # too (verl and slime compute old log-probs with the rollout engine asleep), and gets the memory. Session 10's
    # H200 run timed it next to a resident SGLang engine at 2.0-2.8 s against 1.65 s next to the embedded one (cause
    # not established).
    with runtime.engine_offloaded(run, timer):
        with timer("logprob_recompute"):
            old_lp, entropy = recompute_logprobs(policy, batch, T, a.micro_batch_size, with_entropy=True, algo=a)
            ref_lp = None
            if run.reference is not None:
                ref_lp, _ = recompute_logprobs(run.reference, batch, T, a.micro_batch_size, algo=a)
        mask = batch.response_mask
        metrics["policy/entropy"] = float(entropy[mask].mean())
        metrics["rollout/logprob_abs_diff"] = logprob_gap(old_lp, batch.logprob_rollout_policy, mask)
        if step == run.start_step and run.source.live:
            # The first step of this process: the engine has just received the trainer's weights.
            check_logprob_gap(metrics["rollout/logprob_abs_diff"], cfg.checks.logprob_gap, policy.dtype,
                              run.engine_dtype, cfg.checks.logprob_gap_tolerance, runtime.log)
        with timer("policy_update"):
            metrics.update(update_policy(policy, batch, old_lp, a, temperature=T,
                                         max_response_len=cfg.rollout.max_new_tokens, seed=cfg.seed, step=step,
                                         ref_logprobs=ref_lp))
        if step == 0:
            check_step0_ppo_kl(metrics["policy/ppo_kl_before_update"])
        if memory is not None:
            with timer("memory_update"):
                metrics.update(update_memory(memory, batch, a))
    with timer("weight_push"):
        if run.source.live:
            metrics["sync/bytes"] = runtime.with_engine_restarts(
                run, step, "weight push", lambda: push_weights(run.transport, run.models), repush=False)
            metrics["rollout/engine_restarts"] = float(run.engine_restarts)
    return metrics, batch
