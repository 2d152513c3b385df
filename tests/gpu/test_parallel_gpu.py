"""TP/PP parity of the tiny Qwen3 over NCCL on 2 GPUs: the GPU twin of tests/test_parallel_parity.py.

Same workers, same assertions; torch.distributed picks NCCL when CUDA is available and each rank uses the GPU
of its LOCAL_RANK. fp32 weights (the workers pin dtype=float32), so the fp32 tolerances of the CPU tests apply.
Run on a machine with >= 2 GPUs: ``pytest -m gpu tests/gpu/test_parallel_gpu.py -q``.
"""

import pytest
import torch

from tests import test_parallel_parity as parity
from tests.helpers.dist import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.multigpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2,
        reason="needs 2 CUDA GPUs for NCCL tensor/pipeline parallelism (the CPU/gloo twin is "
               "tests/test_parallel_parity.py)",
    ),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("parity_gpu"))
    out = {"tmp": tmp, "ref": run_distributed(parity._reference_worker, 1, args=(tmp,), timeout=600)[0]}
    out["tp2"] = run_distributed(parity._tp2_worker, 2, args=(tmp,), timeout=600)
    out["pp2"] = run_distributed(parity._pp2_worker, 2, args=(tmp,), timeout=600)
    out["vpp"] = run_distributed(parity._vpp_distopt_worker, 2, args=(tmp,), timeout=600)
    return out


def test_nccl_forward_logprobs_equal_log_softmax_of_the_gptmodel_logits(runs):
    parity.test_forward_logprobs_equal_log_softmax_of_the_gptmodel_logits(runs)


def test_nccl_tensor_parallel_2_matches_single_gpu_losses_and_gradients(runs):
    parity.test_tensor_parallel_2_matches_single_process_losses_and_gradients(runs)


def test_nccl_pipeline_parallel_2_matches_single_gpu_losses_and_gradients(runs):
    parity.test_pipeline_parallel_2_matches_single_process_losses_and_gradients(runs)


def test_nccl_memory_model_on_its_own_layout_trains_like_its_single_gpu_run(runs):
    parity.test_memory_model_on_its_own_layout_trains_like_its_single_process_run(runs)


def test_nccl_checkpoint_saved_at_tp2_loads_at_tp1_with_identical_logits(runs):
    parity.test_checkpoint_saved_at_tp2_loads_at_tp1_with_identical_logits(runs)


def test_nccl_resume_with_optimizer_state_across_layouts_continues_identically(runs):
    parity.test_resume_with_optimizer_state_across_layouts_continues_identically(runs)


def test_nccl_pipeline_forward_handles_uneven_micro_batches_and_other_lengths(runs):
    parity.test_pipeline_forward_handles_uneven_micro_batches_and_other_lengths(runs)


def test_nccl_interleaved_pipeline_matches_single_gpu(runs):
    parity.test_interleaved_pipeline_matches_single_process(runs)


def test_nccl_distributed_optimizer_resumes_at_another_data_parallel_size(runs):
    parity.test_distributed_optimizer_resumes_at_another_data_parallel_size(runs)
