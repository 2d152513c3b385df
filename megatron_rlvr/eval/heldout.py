"""Evaluation stage: the policy ALONE (lambda = 0; optionally pi_cal too) on fixed prompt sets, every
`eval.interval` steps and at the end.

Without `eval.sets` the set is the first `eval.num_prompts` training prompts with `eval.group_size` samples each
(the CPU default; its `eval/avg_at_g`, `eval/pass_at_g`, ... keys stay as they were). With `eval.sets`, every named
held-out file is read like the training data (same tokenizer, chat template and verifier) and sampled `samples`
times per prompt with its own `max_new_tokens`; the metrics are `eval/<set>/avg_at_<n>`, `eval/<set>/pass_at_<k>`
(k = 1, 2, 4, ..., n; megatron_rlvr.eval.passk) and the diversity metrics (megatron_rlvr.eval.diversity), plus
their means over sets under `eval/mean/`. Each evaluation also writes `eval/step_XXXXXX.json` and a PASS@k-vs-k
plot `plots/pass_at_k/step_XXXXXX.png` in the run folder; `table()` is the paper's per-benchmark AVG@8 / PASS@8.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron_rlvr.config import EvalSetConfig, RunConfig, TaskConfig, eval_set_configs
from megatron_rlvr.eval.diversity import diversity_metrics
from megatron_rlvr.eval.passk import accuracy_at_k
from megatron_rlvr.eval.report import TABLE_K, paper_table, write_pass_at_k_plot
from megatron_rlvr.rollout.collect import sampling_params

EVAL_SEED_SALT = 11


@dataclass
class EvalSet:
    name: str
    task: object
    samples: int
    max_new_tokens: int


def build_eval_task(task_cfg: TaskConfig, set_cfg: EvalSetConfig, tokenizer):
    """The task of one eval set: the training task's settings with the set's file, layout and limit. A set's own
    format/keys win; without a format it inherits task.math's format and explicit keys (held-out sets are dataset
    files, so the task is math: `eval_set_configs` checks it)."""
    from megatron_rlvr.tasks import build_task, resolve_keys

    m, s = task_cfg.math, set_cfg
    keys = resolve_keys(s.format or m.format, s.prompt_key or (None if s.format else m.prompt_key),
                        s.answer_key or (None if s.format else m.answer_key))
    return build_task(task_cfg, path=s.path, keys=keys, limit=s.limit, tokenizer=tokenizer)


class Evaluator:
    """Builds the evaluation sets once; `__call__(engine, step)` evaluates and returns the metrics of that step."""

    def __init__(self, run, write: bool = True):
        self.cfg: RunConfig = run.cfg
        self.run_dir = Path(run.run_dir)
        self.write = write  # rank 0 writes files; other ranks have no engine and return {}
        self.legacy = not self.cfg.eval.sets
        self.sets = self._build_sets(run.task)
        self.history: list[tuple[int, dict[str, dict[str, float]]]] = []

    def _build_sets(self, train_task) -> list[EvalSet]:
        cfg, e = self.cfg, self.cfg.eval
        if self.legacy:
            return [EvalSet("train", train_task, e.group_size, cfg.rollout.max_new_tokens)]
        out = []
        for s in eval_set_configs(cfg):
            task = build_eval_task(cfg.task, s, train_task.tokenizer)
            if getattr(train_task, "pool", None) is not None:
                task.pool = train_task.pool  # one set of verifier workers for training and every eval set
            out.append(EvalSet(s.name, task, s.samples, s.max_new_tokens or cfg.rollout.max_new_tokens))
        return out

    def _generate(self, engine, es: EvalSet, lam: float, tau: Optional[float]):
        cfg, e = self.cfg, self.cfg.eval
        examples = es.task.prompts[: e.num_prompts] if self.legacy else es.task.prompts
        sp = sampling_params(cfg, es.task, seed=(cfg.seed * 7 + EVAL_SEED_SALT) % (2**31 - 1))  # same draws each eval
        sp.lam, sp.tau, sp.temperature, sp.max_new_tokens = lam, tau, e.temperature, es.max_new_tokens
        gens = engine.generate([ex.prompt_ids for ex in examples for _ in range(es.samples)], sp)
        exs = [ex for ex in examples for _ in range(es.samples)]
        return exs, gens

    def _evaluate_set(self, engine, es: EvalSet, lam: float, tau: Optional[float]) -> dict[str, float]:
        exs, gens = self._generate(engine, es, lam, tau)
        scored = es.task.score_many(exs, [g.response_ids for g in gens])  # parallel in the verifier pool
        n = es.samples
        correct = [[s[0] > 0.5 for s in scored[i : i + n]] for i in range(0, len(scored), n)]
        texts = [es.task.response_text(g.response_ids) for g in gens]
        m = accuracy_at_k(correct)
        m.update(diversity_metrics([(texts[i : i + n], correct[i // n]) for i in range(0, len(texts), n)],
                                   es.task.final_answer))
        if not self.legacy:  # the default set has always logged it as length_mean
            m["response_length"] = sum(len(g.response_ids) for g in gens) / max(len(gens), 1)
        m["truncated_frac"] = sum(g.finish_reason == "length" for g in gens) / max(len(gens), 1)
        ent = [x for g in gens for x in (g.entropy_cal or [])]
        if ent:
            m["entropy"] = sum(ent) / len(ent)
        m.update({k: v for k, v in es.task.pop_stats().items() if k.startswith("verify/")})
        if self.legacy:  # the keys the CPU default always logged (plots and docs read them)
            from megatron_rlvr.eval.rollout_stats import coverage_metrics, rollout_metrics
            from megatron_rlvr.rollout.types import pack_generations

            batch = pack_generations(gens, [s[0] for s in scored], [i // n for i in range(len(gens))],
                                     es.task.tokenizer.pad_id, modes=[int(s[1]) for s in scored])
            rm = rollout_metrics(batch)
            for k in ("acc/avg_at_g", "acc/pass_at_g", "modes/distinct_correct_per_query", "response/length_mean"):
                if k in rm:
                    m[k.split("/")[-1]] = rm[k]
            # entropy of the correct modes a query's samples hit (0 = collapsed onto one mode)
            cov = coverage_metrics(batch)
            if "modes/answer_entropy" in cov:
                m["correct_mode_entropy"] = cov["modes/answer_entropy"]
        return m

    def __call__(self, engine, step: int) -> dict[str, float]:
        if engine is None:
            return {}
        runs = [("eval", 0.0, None)]
        if self.cfg.eval.with_dlc and self.cfg.dlc.enabled:
            runs.append(("eval_cal", self.cfg.dlc.lam, self.cfg.dlc.plausibility_tau))
        out: dict[str, float] = {}
        per_set: dict[str, dict[str, float]] = {}
        for prefix, lam, tau in runs:
            results = {es.name: self._evaluate_set(engine, es, lam, tau) for es in self.sets}
            if prefix == "eval":
                per_set = results
            if self.legacy:
                out.update({f"{prefix}/{k}": v for k, v in results["train"].items()})
                continue
            for name, m in results.items():
                out.update({f"{prefix}/{name}/{k}": v for k, v in m.items()})
            out.update({f"{prefix}/mean/{k}": v for k, v in mean_over_sets(results).items()})
        self.history.append((step, per_set))
        if self.write:
            folder = self.run_dir / "eval"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "sets": per_set}, indent=1))
            if self.cfg.logging.plots:
                write_pass_at_k_plot(per_set, self.run_dir / "plots" / "pass_at_k" / f"step_{step:06d}.png",
                                     title=f"policy alone (lambda = 0), step {step}")
        return out

    def table(self, k: int = TABLE_K) -> str:
        """The paper's table (per-benchmark AVG@k and PASS@k, and their average) of the last evaluation."""
        if not self.history:
            return ""
        step, per_set = self.history[-1]
        where = f"no eval.sets: first {self.cfg.eval.num_prompts} training prompts," if self.legacy else "held-out"
        return paper_table(per_set, step, k, where)


def mean_over_sets(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the sets that report it (PASS@k only for k every set reaches); `avg` is the mean
    AVG@n whatever each set's n."""
    names = list(results)
    if not names:
        return {}
    common = set.intersection(*(set(m) for m in results.values()))
    out = {k: sum(results[s][k] for s in names) / len(names) for k in sorted(common) if not k.startswith("avg_at_")}
    out["avg"] = sum(next(v for k, v in results[s].items() if k.startswith("avg_at_")) for s in names) / len(names)
    return out
