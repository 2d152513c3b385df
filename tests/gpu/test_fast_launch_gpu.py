"""The sampler's fast launch path on a CUDA GPU: bit-identical to Triton's normal JIT launch, CUDA-graph safe.

The fast path keeps the compiled kernel of each call class and launches it with integer pointers
(kernels/launch_cache.py); ``MEGATRON_RLVR_FAST_LAUNCH=0`` forces the JIT launch. Both must give the same bits for
every shape class the launcher distinguishes (split and unsplit grids, scalar and tensor per-row arguments, the
mask pre-pass, ints Triton specialises such as top_k = 1, misaligned and stride-0 inputs).

Run on a GPU machine: ``pytest -m gpu tests/gpu/test_fast_launch_gpu.py -q``.
"""

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample, dlc_sample_reference
from megatron_rlvr.kernels import dlc_sample_launcher as launcher

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

V = 151936


def _logits(rows, vocab, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    zp = (torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(torch.bfloat16)
    zm = (torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(torch.bfloat16)
    return zp, zm


def _cases():
    d = "cuda"
    return {
        "B1 scalar seed": (1, V, dict(lam=0.5, seed=3, offset=7)),
        "B7 V4099 tensors": (7, 4099, dict(lam=torch.linspace(0, 1, 7, device=d),
                                           temperature=torch.linspace(0.5, 1.5, 7, device=d),
                                           seed=torch.arange(7, device=d), offset=torch.full((7,), 2**33 + 1, device=d))),
        "B99 tau": (99, V, dict(lam=0.8, tau=0.05, seed=torch.arange(99, device=d), offset=2)),
        "B256 split": (256, V, dict(lam=0.5, seed=torch.arange(256, device=d), offset=11)),
        "B989 unsplit": (989, V, dict(lam=0.5, seed=torch.arange(989, device=d), offset=-5)),
        "B5 V111 top_k=1": (5, 111, dict(lam=0.3, top_k=1, seed=torch.arange(5, device=d))),
        "B5 V1000 top_k=16 top_p": (5, 1000, dict(lam=0.3, top_k=16, top_p=0.9, seed=1)),
        "B33 greedy": (33, V, dict(lam=0.7, temperature=0.0)),
        "B3 no memory": (3, V, dict(seed=torch.arange(3, device=d), memory=False)),
    }


def _run(zp, zm, kwargs):
    kwargs = dict(kwargs)
    memory = None if kwargs.pop("memory", True) is False else zm
    return dlc_sample(zp, memory, return_entropy=True, check_nan=False, **kwargs)


def _assert_bit_equal(a, b):
    assert torch.equal(a.tokens, b.tokens)
    for x, y in ((a.logprob_cal, b.logprob_cal), (a.logprob_policy, b.logprob_policy), (a.entropy, b.entropy)):
        assert torch.equal(x.nan_to_num(123.0), y.nan_to_num(123.0))


# The names only at collection: the cases hold CUDA tensors, which a CPU machine (CI) cannot build.
CASE_NAMES = ["B1 scalar seed", "B7 V4099 tensors", "B99 tau", "B256 split", "B989 unsplit", "B5 V111 top_k=1",
              "B5 V1000 top_k=16 top_p", "B33 greedy", "B3 no memory"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_fast_launch_is_bit_identical_to_the_jit_launch(case, monkeypatch):
    rows, vocab, kwargs = _cases()[case]
    zp, zm = _logits(rows, vocab, seed=rows)
    _run(zp, zm, kwargs)  # first call of the class: the JIT compiles and the handle is kept
    before = launcher.STAGE1.fast_launches
    fast = _run(zp, zm, kwargs)
    assert launcher.STAGE1.fast_launches == before + 1, "the second call of a class must take the fast path"
    monkeypatch.setenv("MEGATRON_RLVR_FAST_LAUNCH", "0")
    jit = _run(zp, zm, kwargs)
    assert launcher.STAGE1.fast_launches == before + 1
    _assert_bit_equal(fast, jit)


def test_misaligned_and_stride0_inputs_take_a_correct_path():
    zp, zm = _logits(64, V + 1, seed=2)
    # A view starting 2 bytes in: Triton specialises on 16-byte alignment, so this call must not reuse the
    # handle compiled for aligned pointers (it takes the JIT path).
    zp_off, zm_off = zp[:, 1:], zm[:, 1:]
    seed = torch.arange(64, device="cuda")
    out = dlc_sample(zp_off, zm_off, lam=0.5, seed=seed, offset=1, return_entropy=True)
    ref = dlc_sample_reference(zp_off, zm_off, lam=0.5, seed=seed, offset=1, return_entropy=True)
    assert (out.tokens == ref.tokens).float().mean() > 0.95
    torch.testing.assert_close(out.entropy, ref.entropy, atol=5e-5, rtol=2e-5)
    row = zp[:1, :V]
    for _ in range(2):
        wide = dlc_sample(row.expand(128, -1), zm[:1, :V].expand(128, -1), lam=0.5, seed=seed.repeat(2), offset=3)
    alone = dlc_sample(row, zm[:1, :V], lam=0.5, seed=5, offset=3)
    assert wide.tokens[5] == alone.tokens[0]


def test_fast_launch_replays_in_a_cuda_graph_like_eager_calls():
    rows = 32
    zp, zm = _logits(rows, V, seed=9)
    seed = torch.arange(rows, device="cuda")
    offset = torch.zeros(rows, dtype=torch.int64, device="cuda")
    eager = [dlc_sample(zp, zm, lam=0.5, seed=seed, offset=offset + t, return_entropy=True, check_nan=False)
             for t in range(3)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dlc_sample(zp, zm, lam=0.5, seed=seed, offset=offset, return_entropy=True, check_nan=False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dlc_sample(zp, zm, lam=0.5, seed=seed, offset=offset, return_entropy=True, check_nan=False)
    for t in range(3):
        offset.fill_(t)
        graph.replay()
        torch.cuda.synchronize()
        _assert_bit_equal(out, eager[t])
    assert all(int(buf.abs().sum()) == 0 for buf in launcher._COUNTERS.values())


def test_vocab_shard_partials_are_bit_identical_on_both_launch_paths(monkeypatch):
    zp, zm = _logits(16, V // 4, seed=4)
    seed = torch.arange(16, device="cuda")
    threshold = zp.float().amax(1) - 3.0
    call = lambda: launcher.dlc_partials(zp, zm, 0.5, 1.0, seed, 4, V // 4, None, threshold,  # noqa: E731
                                         return_entropy=True)
    call()
    fast = call()
    monkeypatch.setenv("MEGATRON_RLVR_FAST_LAUNCH", "0")
    jit = call()
    assert torch.equal(fast[0], jit[0]) and torch.equal(fast[1], jit[1])


@pytest.mark.parametrize("rows", [1, 32, 256, 1024])
def test_launch_settings_change_rounding_not_tokens(rows, monkeypatch):
    """The launch rule is free to change: tokens stay those of the previous rule (near-ties aside)."""
    zp, zm = _logits(rows, V, seed=50 + rows)
    seed = torch.arange(rows, device="cuda") * 3 + 1
    new = dlc_sample(zp, zm, lam=0.5, seed=seed, offset=6, return_entropy=True)
    for name, value in (("PROGRAMS_PER_SM", 3), ("MIN_CHUNKS_PER_SPLIT", 2), ("MAX_TILE_CHUNKS", 4),
                        ("LARGE_BATCH_TILE_CHUNKS", 2), ("WARPS_PER_CHUNK", 1)):  # the rule before issue 22
        monkeypatch.setattr(launcher, name, value)
    old = dlc_sample(zp, zm, lam=0.5, seed=seed, offset=6, return_entropy=True)
    assert int((new.tokens != old.tokens).sum()) <= max(1, rows // 500)
    torch.testing.assert_close(new.entropy, old.entropy, atol=5e-5, rtol=2e-5)


@pytest.mark.parametrize("rows", [1, 3, 256])
def test_fast_calls_return_fresh_aligned_outputs_that_later_calls_leave_alone(rows, monkeypatch):
    """Every call's outputs are pieces of its own float32 buffer (one allocation): a later fast call must neither
    reuse nor overwrite them, the tokens must stay 16-byte aligned int64, and the fast path must still be taken."""
    zp, zm = _logits(rows, V, seed=100 + rows)
    seed = torch.arange(rows, device="cuda")
    call = lambda off: dlc_sample(zp, zm, lam=0.5, seed=seed, offset=off, return_entropy=True,  # noqa: E731
                                  check_nan=False)
    call(0)  # the JIT launch keeps the handle
    before = launcher.STAGE1.fast_launches
    first = call(1)
    kept = [t.clone() for t in (first.tokens, first.logprob_cal, first.logprob_policy, first.entropy)]
    second = call(2)
    torch.cuda.synchronize()
    assert launcher.STAGE1.fast_launches == before + 2, "both calls of the cached class must take the fast path"
    assert first.tokens.untyped_storage().data_ptr() != second.tokens.untyped_storage().data_ptr()
    for out in (first, second):
        assert out.tokens.dtype == torch.int64 and out.tokens.shape == (rows,) and out.tokens.is_contiguous()
        assert out.tokens.data_ptr() % 16 == 0 and out.logprob_cal.data_ptr() % 16 == 0
        assert out.tokens.untyped_storage().data_ptr() == out.entropy.untyped_storage().data_ptr()
    for a, b in zip(kept, (first.tokens, first.logprob_cal, first.logprob_policy, first.entropy)):
        assert torch.equal(a.nan_to_num(123.0), b.nan_to_num(123.0))
    monkeypatch.setenv("MEGATRON_RLVR_FAST_LAUNCH", "0")
    _assert_bit_equal(second, call(2))
    ref = dlc_sample_reference(zp, zm, lam=0.5, seed=seed, offset=2, return_entropy=True)
    assert (second.tokens == ref.tokens).float().mean() > 0.95


def test_a_cached_class_still_rejects_bad_scalars_and_new_tensor_properties():
    zp, zm = _logits(4, V, seed=7)
    seed = torch.arange(4, device="cuda")
    for _ in range(2):
        dlc_sample(zp, zm, lam=0.5, seed=seed, offset=1, check_nan=False)
    with pytest.raises(ValueError, match="lam must be a finite float"):
        dlc_sample(zp, zm, lam=float("nan"), seed=seed, offset=1, check_nan=False)
    with pytest.raises(ValueError, match="temperature must be a finite float"):
        dlc_sample(zp, zm, lam=0.5, temperature=-1.0, seed=seed, offset=1, check_nan=False)
    with pytest.raises(ValueError, match="seed tensor must be"):
        dlc_sample(zp, zm, lam=0.5, seed=seed.cpu(), offset=1, check_nan=False)
    with pytest.raises(ValueError, match="memory_logits on"):
        dlc_sample(zp, zm.cpu(), lam=0.5, seed=seed, offset=1, check_nan=False)


def test_the_launchers_current_device_query_matches_torchs():
    # _current_device is torch._C._cuda_getDevice (torch.cuda.current_device() without its Python wrapper)
    assert launcher._current_device() == torch.cuda.current_device()
    if torch.cuda.device_count() > 1:
        with torch.cuda.device(1):
            assert launcher._current_device() == torch.cuda.current_device() == 1
