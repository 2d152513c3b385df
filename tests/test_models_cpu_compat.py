"""CPU redirections of megatron-core's CUDA-only calls (megatron_rlvr.distributed.cpu_compat)."""

import subprocess
import sys

import pytest
import torch

from megatron_rlvr.distributed import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour; on GPU activate() is a no-op")


def test_activate_is_idempotent_and_keeps_real_torch_outside_megatron():
    assert cpu_compat.activate() is True
    from megatron.core.transformer import utils as tutils

    proxy = tutils.torch
    assert cpu_compat.activate() is True
    assert tutils.torch is proxy and proxy is not torch
    assert cpu_compat.torch is torch and torch.cuda.current_device is not proxy.cuda.current_device


def test_megatron_helpers_with_literal_cuda_devices_produce_cpu_tensors():
    cpu_compat.activate()
    from megatron.core.transformer.utils import get_default_causal_mask

    mask = get_default_causal_mask(4)
    assert mask.device.type == "cpu"
    assert torch.equal(mask, torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1))


def test_grad_clipping_scales_cpu_gradients_like_megatron():
    cpu_compat.activate()
    from megatron.core.optimizer import clip_grads

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    for p in params:
        p.grad = torch.full_like(p, 2.0)
    total_norm = float(torch.sqrt(torch.tensor(5 * 4.0)))
    clip_grads.clip_grad_by_total_norm_fp32(params, max_norm=1.0, total_norm=total_norm)
    new_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    assert new_norm.item() == pytest.approx(1.0, rel=1e-5)
    clip_grads.clip_grad_by_total_norm_fp32(params, max_norm=10.0, total_norm=new_norm.item())
    assert torch.sqrt(sum((p.grad ** 2).sum() for p in params)).item() == pytest.approx(1.0, rel=1e-5)


def test_activate_does_nothing_when_cuda_is_available():
    code = (
        "import torch; torch.cuda.is_available = lambda: True\n"
        "from megatron_rlvr.distributed import cpu_compat\n"
        "assert cpu_compat.activate() is False and not cpu_compat.is_active()\n"
        "from megatron.core.transformer import utils\n"
        "assert utils.torch is torch\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
