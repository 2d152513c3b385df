"""The read-roofline kernel of the sampler benchmark reads every logit of both tensors exactly once (its per-split
sums equal the PyTorch reference), on awkward shapes, with the sampler's launch shape."""

import pytest
import torch

from megatron_rlvr.kernels.bench_roofline import read_both, read_both_reference, read_plan


@pytest.mark.parametrize("rows,vocab,dtype", [(1, 1, torch.float32), (3, 4099, torch.bfloat16),
                                              (2, 9496, torch.float16), (5, 2048, torch.float32)])
def test_per_split_sums_equal_the_reference(triton_interpreter, rows, vocab, dtype):
    g = torch.Generator().manual_seed(vocab)
    zp = torch.randn(rows, vocab + 7, generator=g).to(dtype)[:, 3:vocab + 3]  # a row stride that is not V
    zm = torch.randn(rows, vocab, generator=g).to(dtype)
    splits, per_split, _, _ = read_plan(rows, vocab, zp.device)
    out = read_both(zp, zm)
    assert out.shape == (rows, splits)
    torch.testing.assert_close(out, read_both_reference(zp, zm, per_split), rtol=1e-4, atol=1e-3)
