"""The sampler's low-overhead launch path and its launch rule, on the CPU.

The fast path (a cached compiled kernel launched with integer pointers) only exists on a GPU; here we check what
makes it safe: that its cache key separates every case Triton's JIT compiles separately, that it hands the kernel
exactly the arguments the JIT path does, and that the launch rule gives a valid grid for any device and shape.
tests/gpu/test_fast_launch_gpu.py checks the real launches bit for bit on CUDA.
"""

import inspect
import itertools

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample, dlc_sample_reference
from megatron_rlvr.kernels import dlc_sample_kernel as kernels
from megatron_rlvr.kernels import dlc_sample_launcher as launcher
from megatron_rlvr.kernels.dlc_launch_rule import CHUNK, launch_plan
from megatron_rlvr.kernels.launch_cache import specialization_class


def _native_specialization(value):
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return native_specialize_impl(BaseBackend, value, False, True, True)


def test_cache_key_class_separates_exactly_what_triton_specialises_on(monkeypatch):
    # Triton's first specialisation imports its gluon module, which asserts the interpreter mode that the root
    # conftest imported triton in (kernel modules are interpreted functions then).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    buf = torch.empty(64)
    values = [0, 1, 2, 15, 16, 17, 48, -16, -17, 2**31 - 1, 2**31, 2**31 + 16, -(2**31) - 16, 2**40,
              0.5, 1.0, True, False, buf, buf[1:], buf[4:], buf.half(), buf.half()[1:], buf.to(torch.bfloat16),
              torch.zeros(3, dtype=torch.int64), torch.zeros(4, dtype=torch.int32)[1:]]
    for a, b in itertools.combinations_with_replacement(values, 2):
        same_for_triton = _native_specialization(a) == _native_specialization(b)
        assert (specialization_class(a) == specialization_class(b)) == same_for_triton, (a, b)


def test_threshold_handle_key_tells_apart_every_mask_kind_triton_compiles_apart():
    def key(tau, top_k, top_p, pmax):
        c = launcher.threshold_constexprs(True, False, False, tau, top_k, top_p, pmax, 1024)
        return launcher.threshold_handle_key(("stage-1 key",), top_k, c)

    # The regression (seen on an H200): a top-k + top-p call replayed the top-k-only kernel, top-p ignored.
    assert key(None, 40, 0.7, False) != key(None, 50, 1.0, False)
    combos = list(itertools.product([None, 0.05], [0, 1, 16, 40], [1.0, 0.7], [False, True]))
    for a, b in itertools.combinations(combos, 2):
        same_kernel = ((a[0] is None, a[1] > 0, a[2] < 1, a[3]) == (b[0] is None, b[1] > 0, b[2] < 1, b[3])
                       and specialization_class(a[1]) == specialization_class(b[1]))
        assert (key(*a) == key(*b)) == same_kernel, (a, b)


def test_threshold_constexprs_are_in_signature_order():
    names, constexprs = _signature(kernels.dlc_threshold_kernel)
    assert list(launcher.threshold_constexprs(True, False, False, None, 0, 1.0, False, 1024)) == constexprs
    assert names[-len(constexprs):] == constexprs


def _signature(fn):
    """Parameter names of a Triton kernel, and which of them are constexpr (the interpreter keeps the raw fn)."""
    params = inspect.signature(getattr(fn, "fn", fn)).parameters
    return list(params), [name for name, p in params.items() if "constexpr" in str(p.annotation)]


def test_fast_path_constexprs_are_in_signature_order():
    names, constexprs = _signature(kernels.dlc_stage1_kernel)
    zp = torch.zeros(3, 4099)
    plan = launcher._stage1_plan(None, zp, zp, 0.5, 1.0, torch.arange(3), 0, None, 0, 1.0, 0, True, None, None, False)
    assert list(plan.constexprs) == list(plan.constexprs_counter) == constexprs
    assert names[-len(constexprs):] == constexprs  # constexprs close the signature: appended after the runtime args
    assert plan.tails == tuple(plan.ints + tuple(c.values()) for c in (plan.constexprs, plan.constexprs_counter))


def _normalise(arg, out, tokens_addr, dummies):
    """An argument as the kernel sees it: an address relative to the call's buffers, or the value itself."""
    addr = arg.data_ptr() if isinstance(arg, torch.Tensor) else arg
    if isinstance(arg, torch.Tensor) or (isinstance(arg, int) and not isinstance(arg, bool) and arg > 1 << 20):
        base = out.logprob_cal.data_ptr()
        for name, ref in (("dummy_f", dummies[0]), ("dummy_i", dummies[1])):
            if addr == ref:
                return name
        if addr == tokens_addr:
            return "tokens"
        if 0 <= addr - base < out.logprob_cal.untyped_storage().nbytes():
            return ("buffer", addr - base)
        return ("input", addr)
    return arg


@pytest.mark.parametrize("case", ["scalar", "tensors", "split_tau_topk", "noise_no_entropy"])
def test_fast_launch_hands_the_kernel_the_same_arguments_as_the_jit_launch(case, monkeypatch):
    rows, vocab = (2, 4099) if case == "split_tau_topk" else (5, 1000)
    g = torch.Generator().manual_seed(1)
    zp, zm = torch.randn(rows, vocab, generator=g), torch.randn(rows, vocab, generator=g)
    kwargs = dict(lam=0.5, temperature=0.9, seed=7, offset=3, return_entropy=True)
    if case == "tensors":
        kwargs.update(lam=torch.linspace(0, 1, rows), temperature=torch.linspace(0.5, 1, rows),
                      seed=torch.arange(rows), offset=torch.full((rows,), 2**33 + 5))
    if case == "split_tau_topk":
        monkeypatch.setattr(launcher, "PROGRAMS_PER_SM", 6)  # 2 rows x 3 splits on the interpreter's "1 SM"
        kwargs.update(tau=0.1, top_k=16, seed=-3)
    if case == "noise_no_entropy":
        kwargs.update(uniform_noise=torch.rand(rows, vocab, generator=g).clamp(1e-6, 1 - 1e-6), return_entropy=False)
    counters = torch.zeros(64, dtype=torch.int32)
    monkeypatch.setattr(launcher, "_arrival_counters", lambda r, d: counters)
    monkeypatch.setattr(launcher, "_interpret", lambda: False)  # the GPU's launch plan (tiles), not the interpreter's
    monkeypatch.setattr(launcher, "_num_sms", lambda index: 1)
    dummies = launcher._dummies(zp.device)[2:]  # the placeholders' addresses

    seen = {}

    def record(path):
        def capture(self, *args):  # launch_jit(key, grid, args, constexprs, num_warps) / launch(handle, grid, args)
            constexprs = list(args[3].values()) if path == "jit" else []  # the fast path's args end with them
            seen.setdefault(path, []).append((self.fn, tuple(args[1]), list(args[2]) + constexprs))
            return True  # the fast launch "succeeded"
        return capture

    from megatron_rlvr.kernels.launch_cache import CachedKernel

    monkeypatch.setattr(CachedKernel, "launch_jit", record("jit"))
    out_jit = launcher._launch(zp, zm, kwargs["lam"], kwargs["temperature"], kwargs["seed"], kwargs["offset"],
                               kwargs.get("tau"), kwargs.get("top_k", 0), 1.0, 0, kwargs["return_entropy"],
                               kwargs.get("uniform_noise"), None, False)
    tok_jit = out_jit.tokens.data_ptr()
    monkeypatch.setattr(CachedKernel, "handle", lambda self, key: "compiled")
    monkeypatch.setattr(CachedKernel, "launch", record("fast"))
    out_fast = launcher._launch(zp, zm, kwargs["lam"], kwargs["temperature"], kwargs["seed"], kwargs["offset"],
                                kwargs.get("tau"), kwargs.get("top_k", 0), 1.0, 0, kwargs["return_entropy"],
                                kwargs.get("uniform_noise"), None, False)
    assert len(seen["jit"]) == len(seen["fast"]) == (2 if "tau" in kwargs else 1)
    for (fn_j, grid_j, args_j), (fn_f, grid_f, args_f) in zip(seen["jit"], seen["fast"]):
        assert fn_j is fn_f and grid_j == grid_f
        names, _ = _signature(fn_j)
        assert len(args_j) == len(args_f) == len(names)
        for name, a, b in zip(names, args_j, args_f):
            assert _normalise(a, out_jit, tok_jit, dummies) == _normalise(b, out_fast, out_fast.tokens.data_ptr(),
                                                                          dummies), name


@pytest.mark.usefixtures("triton_interpreter")
def test_a_fast_launch_the_launcher_refuses_falls_back_to_the_jit_launch(monkeypatch):
    from megatron_rlvr.kernels.launch_cache import CachedKernel

    class Refusing:  # a compiled handle whose C launcher rejects the arguments (another Triton's layout)
        function, packed_metadata = 1, (4, 1, 0)

        def run(self, *args):
            raise TypeError("function takes exactly 50 arguments")

    g = torch.Generator().manual_seed(2)
    zp, zm = torch.randn(3, 1000, generator=g), torch.randn(3, 1000, generator=g)
    expected = dlc_sample(zp, zm, lam=0.5, seed=torch.arange(3), offset=1, return_entropy=True)
    monkeypatch.setattr(CachedKernel, "handle", lambda self, key: None if self.disabled else Refusing())
    monkeypatch.setattr(launcher.STAGE1, "_stream", lambda device: 0)
    monkeypatch.setattr(launcher.STAGE1, "disabled", None)
    with pytest.warns(RuntimeWarning, match="fast launch"):
        out = dlc_sample(zp, zm, lam=0.5, seed=torch.arange(3), offset=1, return_entropy=True)
    assert launcher.STAGE1.disabled and "50 arguments" in launcher.STAGE1.disabled
    assert torch.equal(out.tokens, expected.tokens) and torch.equal(out.entropy, expected.entropy)


@pytest.mark.usefixtures("triton_interpreter")
def test_cached_plans_give_the_results_of_a_fresh_plan():
    g = torch.Generator().manual_seed(4)
    zp, zm = torch.randn(7, 4099, generator=g), torch.randn(7, 4099, generator=g)
    calls = [dict(seed=torch.arange(7), offset=3), dict(seed=5, offset=torch.arange(7)), dict(seed=5, offset=3)]
    launcher.clear_launch_caches()
    fresh = [dlc_sample(zp, zm, lam=0.5, return_entropy=True, **c) for c in calls]
    cached = [dlc_sample(zp, zm, lam=0.5, return_entropy=True, **c) for c in calls]
    for a, b, c in zip(fresh, cached, calls):
        ref = dlc_sample_reference(zp, zm, lam=0.5, return_entropy=True, **c)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, ref.tokens)
        for x, y in ((a.logprob_cal, b.logprob_cal), (a.logprob_policy, b.logprob_policy), (a.entropy, b.entropy)):
            assert torch.equal(x, y)


@pytest.mark.parametrize("sms", [1, 7, 66, 78, 113, 132, 144])
@pytest.mark.parametrize("rows", [1, 7, 99, 256, 989, 4096])
def test_launch_rule_covers_every_chunk_once_for_any_device(sms, rows):
    for vocab, vocab_offset in ((1, 0), (111, 0), (1025, 0), (4099, 0), (151936, 0), (18992, 3 * 18992),
                                (75968, 75968)):
        settings = (launcher.PROGRAMS_PER_SM, launcher.MIN_CHUNKS_PER_SPLIT, launcher.MAX_TILE_CHUNKS,
                    launcher.LARGE_BATCH_TILE_CHUNKS, launcher.WARPS_PER_CHUNK)
        plan = launch_plan(rows, vocab, vocab_offset, sms, *settings)
        n_chunks = plan.chunk_hi - plan.chunk_lo
        assert plan.chunk_lo * CHUNK <= vocab_offset and plan.chunk_hi * CHUNK >= vocab_offset + vocab
        assert plan.splits * plan.per_split >= n_chunks > (plan.splits - 1) * plan.per_split  # no empty split
        assert plan.tile & (plan.tile - 1) == 0 and plan.tile <= max(1, 2 * plan.per_split)
        assert plan.num_warps in (1, 2, 4, 8, 16)


def test_launch_rule_refuses_empty_shapes_clearly():
    with pytest.raises(ValueError, match="rows, vocab and sms"):
        launch_plan(0, 100, 0, 132, 3, 2, 4, 2, 1)


def test_sweep_scoring_ranks_first_the_rule_that_picks_the_fastest_setting_at_every_batch(capsys):
    from megatron_rlvr.kernels import bench_sweep

    vocab, sms, batches = 151936, 132, (64, 256, 1024)
    winner = (6, 2, 4, 2, 2)  # programs/SM, min chunks, max tile, large-batch tile, warps per chunk
    fast = {b: launch_plan(b, vocab, 0, sms, *winner) for b in batches}
    results = {}
    for b in batches:
        for splits in bench_sweep._splits_for(b, vocab, sms):
            for tile in bench_sweep.TILES:
                for warps in bench_sweep._warps_for(tile):
                    p = fast[b]
                    results[(b, splits, tile, warps)] = 1.0 if (splits, tile, warps) == (p.splits, p.tile,
                                                                                      p.num_warps) else 2.0
    ranked = bench_sweep._score_rules(results, batches, vocab, sms, torch.bfloat16, 3e12)
    assert ranked[0][0] == 1.0  # worst ratio 1: the fastest setting at every batch
    assert winner in [consts for worst, _, consts, _ in ranked if worst == 1.0]
    assert "rule candidates" in capsys.readouterr().out


def test_the_fast_launch_switch_follows_every_write_to_the_environment(monkeypatch):
    from megatron_rlvr.kernels.launch_cache import fast_launch_enabled

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MEGATRON_RLVR_FAST_LAUNCH", raising=False)
    assert fast_launch_enabled()
    monkeypatch.setenv("MEGATRON_RLVR_FAST_LAUNCH", "0")
    assert not fast_launch_enabled()
    monkeypatch.setenv("MEGATRON_RLVR_FAST_LAUNCH", "1")
    assert fast_launch_enabled()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not fast_launch_enabled()
