"""Weight-sync stage: push both models' new weights to the rollout engines after every update.

One package, one transport class per path, chosen once at start-up by `build_transport`:

    InProcessCopy   embedded engine in the trainer's process: tensors copied into its modules   (inprocess.py)
    TensorBuckets   colocated SGLang on this host: buckets of CUDA-IPC / shared-memory handles   (tensor.py)
    Broadcast       dedicated SGLang servers on other hosts: NCCL (gloo on CPU) broadcast over
                    one group spanning trainer rank 0 and every server rank                      (broadcast.py)

All of them are fed by the converter's name map: `push_weights` streams each model with Hugging Face Qwen3 names
(`megatron_rlvr.qwen3.live.export_hf_tensors`), so the rollout sync and the offline export cannot disagree.
The receiving ends are declared in `megatron_rlvr.rollout.engine`; each engine implements one of them.
"""

from megatron_rlvr.weight_sync.base import WeightTransport, buckets
from megatron_rlvr.weight_sync.broadcast import Broadcast
from megatron_rlvr.weight_sync.inprocess import InProcessCopy
from megatron_rlvr.weight_sync.push import build_transport, push_weights
from megatron_rlvr.weight_sync.tensor import TensorBuckets

__all__ = ["Broadcast", "InProcessCopy", "TensorBuckets", "WeightTransport", "build_transport", "buckets",
           "push_weights"]
