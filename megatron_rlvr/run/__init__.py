"""Run plumbing around the loop in `megatron_rlvr.train` (none of it is a stage of the algorithm):

- `runtime`: set-up and tear-down (process groups, run folder, models, engine, resume, export), engine restarts;
- `guard`: the run-folder lock, stop signals (preemption), resume and config-change checks;
- `warm_start`: the cached supervised warm start and its quality gate;
- `checks`: the in-loop invariants (step-0 log-prob gap, PPO KL before the first update);
- `metrics`, `progress`: metrics.jsonl / TensorBoard / plots, and the progress bar.
"""
