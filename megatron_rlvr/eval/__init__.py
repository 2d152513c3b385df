"""Evaluation stage: held-out evaluation of the policy alone (lambda = 0), PASS@k / AVG@k, diversity metrics.

- `passk`: the unbiased PASS@k estimator (Chen et al. 2021) and AVG@k from n samples per prompt;
- `diversity`: per-prompt answer entropy, distinct final answers, and the diversity of correct solutions
  (distinct n-gram ratio, pairwise similarity), for rollouts and evaluation (docs/ALGORITHMS.md);
- `heldout`: the `Evaluator` the training loop calls every `eval.interval` steps (`eval.sets`);
- `report`: the PASS@k-vs-k plot per evaluation and the paper's AVG@8 / PASS@8 table.
"""

from megatron_rlvr.eval.diversity import diversity_metrics, rollout_diversity
from megatron_rlvr.eval.passk import accuracy_at_k, ks_up_to, pass_at_k

__all__ = ["accuracy_at_k", "diversity_metrics", "ks_up_to", "pass_at_k", "rollout_diversity"]
