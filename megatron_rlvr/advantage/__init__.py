"""Advantage stage: one scalar advantage per response from the verifier rewards of its group.

- `estimators`: GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline, raw, mean (`compute_advantages` = estimator, then IAC);
- `iac`: inverse-success advantage calibration (docs/ALGORITHMS.md, "IAC");
- `stage`: `assign_advantages`, the step's call: fills `RolloutBatch.advantages` and returns the metrics.

Pure tensor functions: no Megatron, no process groups; the toy study in `examples/toy_softmax` uses them too.
"""

from megatron_rlvr.advantage.estimators import ESTIMATORS, GROUP_ESTIMATORS, base_advantages, compute_advantages
from megatron_rlvr.advantage.iac import iac_calibrate
from megatron_rlvr.advantage.stage import assign_advantages

__all__ = ["ESTIMATORS", "GROUP_ESTIMATORS", "assign_advantages", "base_advantages", "compute_advantages",
           "iac_calibrate"]
