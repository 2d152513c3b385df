"""The study's grid: every row is a set of `megatron-rlvr train` overrides, run for several seeds with one budget.

Rows come in groups: the paper's Table 3 (GRPO, DAPO, IAC, DAPO+IAC, DAPO+IAC+DLC), the IAC alpha sweep of its
Table 5, a DLC lambda sweep, and DLC without / with each off-policy correction. Rows that coincide with another
(alpha 0 is GRPO, alpha 1 is IAC, lambda 0.3 and "no correction" are DAPO+IAC+DLC) are run once and reported in
every group they belong to.
"""

from __future__ import annotations

DAPO = ["algorithm.dynamic_sampling=true", "algorithm.clip_eps_high=0.28", "algorithm.overlong_shaping=true",
        "algorithm.loss_agg=token-mean"]
NO_DLC = ["dlc.enabled=false"]
FULL = ["algorithm.iac_alpha=1", "dlc.enabled=true", "dlc.lam=0.3", *DAPO]  # DAPO+IAC+DLC, the paper's best

ROWS: dict[str, list[str]] = {
    # paper Table 3
    "GRPO": ["algorithm.iac_alpha=0", *NO_DLC],
    "DAPO": ["algorithm.iac_alpha=0", *NO_DLC, *DAPO],
    "IAC": ["algorithm.iac_alpha=1", *NO_DLC],
    "DAPO+IAC": ["algorithm.iac_alpha=1", *NO_DLC, *DAPO],
    "DAPO+IAC+DLC": FULL,
    # paper Table 5: GRPO + IAC(alpha); alpha 0 = GRPO and alpha 1 = IAC above
    "IAC a=0.5": ["algorithm.iac_alpha=0.5", *NO_DLC],
    "IAC a=1.5": ["algorithm.iac_alpha=1.5", *NO_DLC],
    "IAC a=2": ["algorithm.iac_alpha=2", *NO_DLC],
    # DLC balance factor; lambda 0.3 = DAPO+IAC+DLC, lambda 0 ~ DAPO+IAC (memory trained, unused)
    "DLC l=0.15": [*FULL, "dlc.lam=0.15"],
    "DLC l=0.5": [*FULL, "dlc.lam=0.5"],
    "DLC l=0.7": [*FULL, "dlc.lam=0.7"],
    # DLC off-policy corrections (megatron_rlvr/update/offpolicy.py); none = DAPO+IAC+DLC
    "DLC tis(product)": [*FULL, "algorithm.tis=true", "algorithm.tis_cap=2"],
    "DLC shift token-tis": [*FULL, "algorithm.shift_correction=token-tis", "algorithm.shift_cap=2"],
    "DLC shift seq-tis": [*FULL, "algorithm.shift_correction=seq-tis", "algorithm.shift_cap=2"],
    "DLC shift token-mis": [*FULL, "algorithm.shift_correction=token-mis", "algorithm.shift_cap=2",
                            "algorithm.shift_mask_low=0.5"],
    "DLC shift seq-mis": [*FULL, "algorithm.shift_correction=seq-mis", "algorithm.shift_cap=4",
                          "algorithm.shift_mask_low=0.25"],
    "DLC mismatch token-mis": [*FULL, "algorithm.mismatch_correction=token-mis", "algorithm.mismatch_cap=2",
                               "algorithm.mismatch_mask_low=0.5"],
}

GROUPS: dict[str, list[tuple[str, str]]] = {  # (label shown in the group's table, row)
    "Table 3 (paper): methods": [(r, r) for r in ("GRPO", "DAPO", "IAC", "DAPO+IAC", "DAPO+IAC+DLC")],
    "Table 5 (paper): IAC alpha sweep (GRPO + IAC)": [
        ("alpha 0 (GRPO)", "GRPO"), ("alpha 0.5", "IAC a=0.5"), ("alpha 1 (IAC)", "IAC"), ("alpha 1.5", "IAC a=1.5"),
        ("alpha 2", "IAC a=2")],
    "DLC lambda sweep (DAPO + IAC + DLC)": [
        ("lambda 0 (DAPO+IAC)", "DAPO+IAC"), ("lambda 0.15", "DLC l=0.15"), ("lambda 0.3", "DAPO+IAC+DLC"),
        ("lambda 0.5", "DLC l=0.5"), ("lambda 0.7", "DLC l=0.7")],
    "DLC off-policy corrections (DAPO + IAC + DLC, lambda 0.3)": [
        ("none", "DAPO+IAC+DLC"), ("tis on pi_old/pi_cal (legacy)", "DLC tis(product)"),
        ("shift token-tis C=2", "DLC shift token-tis"), ("shift seq-tis C=2", "DLC shift seq-tis"),
        ("shift token-mis [0.5, 2]", "DLC shift token-mis"), ("shift seq-mis [0.25, 4]", "DLC shift seq-mis"),
        ("mismatch token-mis [0.5, 2]", "DLC mismatch token-mis")],
}

# Every run: the coupled task, a large evaluation sample of the policy alone (PASS@k up to k = 64 >> G = 8),
# checkpoints only for resuming a killed run, no exports.
COMMON = [
    "task.name=synthetic_coupled", "eval.interval=50", "eval.num_prompts=32", "eval.group_size=64",
    "logging.progress=false", "logging.tensorboard=false", "logging.plots=false", "checkpoint.export_hf=false",
    "checkpoint.save_interval=0", "checkpoint.load=none",
]

BUDGETS: dict[str, dict] = {
    # rows x seeds x steps; `full` is the study of docs/RESULTS.md, `table3` the reduced grid when GPU time is short
    "full": {"rows": list(ROWS), "seeds": [0, 1, 2, 3, 4], "steps": 300},
    "table3": {"rows": ["GRPO", "DAPO", "IAC", "DAPO+IAC", "DAPO+IAC+DLC"], "seeds": [0, 1, 2, 3, 4], "steps": 300},
    "smoke": {"rows": ["GRPO"], "seeds": [0], "steps": 1},
}

# Metrics kept per evaluation (all of the policy alone) and, every `TRAIN_EVERY` steps, of training
EVAL_PREFIX = "eval/"
TRAIN_KEYS = ("reward/mean", "acc/avg_at_g", "modes/distinct_correct_per_query", "policy/entropy",
              "dlc/kl_cal_policy", "policy/tis_weight_mean", "time/step")
TRAIN_PREFIXES = ("offpolicy/",)
TRAIN_EVERY = 10
