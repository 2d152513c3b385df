"""The sampler's per-call-class cache and its one output buffer per call, on the CPU.

``dlc_sample`` keys each call by its class (``_call_key``: every input property ``check_inputs`` and the launch plan
read); a class seen before skips the checks and the planning, and every call's outputs are pieces of one fresh
float32 buffer. Checked here: the pieces are ordinary, independent, aligned outputs; a repeated class gives the
results of a fresh one and still takes the fast launch; every bad input still raises check_inputs' error.
tests/gpu/test_fast_launch_gpu.py checks the same on CUDA with real launches.
"""

import math

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample, dlc_sample_reference
from megatron_rlvr.kernels import dlc_sample_launcher as launcher
from megatron_rlvr.kernels.dlc_sample_args import check_inputs
from megatron_rlvr.kernels.launch_cache import CachedKernel


def _logits(rows, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * 3, torch.randn(rows, vocab, generator=g) * 3


def _ranges(out):
    """Byte ranges [start, end) of the outputs in their shared storage."""
    return [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
            for t in (out.tokens, out.logprob_cal, out.logprob_policy, out.entropy) if t is not None]


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 7, 8])
@pytest.mark.parametrize("flags", [dict(), dict(return_entropy=True), dict(tau=0.1, top_k=3, return_entropy=True),
                                   dict(uniform_noise=True)])
def test_every_layout_puts_the_tokens_on_a_16_byte_boundary_after_every_float_region(rows, flags):
    zp, zm = _logits(rows, 4099)
    noise = torch.rand(rows, 4099) if flags.get("uniform_noise") else None
    for partials_only in (False, True):
        st = launcher._stage1_plan(None, zp, zm, 0.5, 1.0, torch.arange(rows), 0, flags.get("tau"),
                                   flags.get("top_k", 0), 1.0, 0, flags.get("return_entropy", False), noise, None,
                                   partials_only)
        tok = st.byte_offsets[5]
        assert tok % 16 == 0 and sum(st.split) == st.n_float and st.split[-1] == 2 * rows
        assert 4 * st.n_float == tok + 8 * rows  # the tokens close the buffer
        sizes = {0: rows, 1: rows, 2: rows, 3: rows, 4: rows, 5: 8 * st.plan.splits * rows, 6: st.plan.splits * rows,
                 7: st.plan.splits * st.plan.per_split * rows}
        ends = [4 * (o + sizes[i]) for i, o in enumerate(st.offsets) if o >= 0]
        assert max(ends) <= tok  # no float region reaches the tokens
        assert st.offsets[:2] == (0, rows)  # the two-buffer layout's float offsets: the kernel's alignments unchanged


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("rows", [1, 3, 4])
def test_outputs_are_fresh_aligned_pieces_of_one_buffer_that_later_calls_leave_alone(rows):
    zp, zm = _logits(rows, 1000, seed=rows)
    call = lambda off: dlc_sample(zp, zm, lam=0.5, seed=torch.arange(rows), offset=off,  # noqa: E731
                                  return_entropy=True)
    first = call(1)
    kept = [t.clone() for t in (first.tokens, first.logprob_cal, first.logprob_policy, first.entropy)]
    second = call(2)
    assert first.tokens.dtype == torch.int64 and first.tokens.shape == (rows,) and first.tokens.is_contiguous()
    for out in (first, second):
        storage = out.tokens.untyped_storage().data_ptr()
        assert all(t.untyped_storage().data_ptr() == storage for t in (out.logprob_cal, out.logprob_policy,
                                                                       out.entropy))  # one allocation
        assert out.tokens.data_ptr() % 16 == 0 and out.logprob_cal.data_ptr() % 16 == 0
        spans = sorted(_ranges(out))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two outputs overlap
    assert first.tokens.untyped_storage().data_ptr() != second.tokens.untyped_storage().data_ptr()
    for before, now in zip(kept, (first.tokens, first.logprob_cal, first.logprob_policy, first.entropy)):
        assert torch.equal(before, now)  # the second call wrote its own buffer
    second.tokens.fill_(-5)  # writing one call's outputs leaves the other call's alone
    second.logprob_cal.zero_()
    assert torch.equal(kept[0], first.tokens) and torch.equal(kept[1], first.logprob_cal)


@pytest.mark.usefixtures("triton_interpreter")
def test_a_repeated_call_class_skips_the_checks_and_gives_the_results_of_a_fresh_one(monkeypatch):
    zp, zm = _logits(3, 4099, seed=5)
    calls = [dict(lam=0.5, seed=torch.arange(3), offset=3, return_entropy=True),
             dict(lam=0.7, temperature=0.8, seed=9, offset=4, tau=0.2, return_entropy=True),
             dict(lam=torch.linspace(0, 1, 3), temperature=torch.ones(3, dtype=torch.float64), seed=2**40,
                  offset=torch.arange(3), top_k=5, top_p=0.9)]
    launcher.clear_launch_caches()
    checked = []
    monkeypatch.setattr(launcher, "check_inputs", lambda *a: checked.append(a) or check_inputs(*a))
    fresh = [dlc_sample(zp, zm, **c) for c in calls]
    assert len(checked) == len(calls)
    cached = [dlc_sample(zp, zm, **c) for c in calls]
    assert len(checked) == len(calls)  # every second call of a class took the cached branch
    for a, b, c in zip(fresh, cached, calls):
        ref = dlc_sample_reference(zp, zm, **c)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, ref.tokens)
        for x, y in ((a.logprob_cal, b.logprob_cal), (a.logprob_policy, b.logprob_policy), (a.entropy, b.entropy)):
            assert (x is None and y is None) or torch.equal(x, y)
    # a property the key holds changes the class: a new check (and plan)
    dlc_sample(zp, zm, lam=0.5, seed=torch.arange(3, dtype=torch.int32), offset=3, return_entropy=True)
    assert len(checked) == len(calls) + 1


def _bad_calls():
    zp, zm = _logits(3, 64)
    good = dict(lam=0.5, temperature=1.0, seed=torch.arange(3), offset=2)
    bad = [dict(lam=math.nan), dict(lam=-1.0), dict(lam=math.inf), dict(lam=-1), dict(lam="x"),
           dict(temperature=-0.5), dict(temperature=math.nan), dict(seed=1.5), dict(offset=torch.zeros(3)),
           dict(seed=torch.arange(4)), dict(lam=torch.ones(4)), dict(tau=0.0), dict(tau=2.0), dict(top_k=-1),
           dict(top_k=1.0), dict(top_k=[1]), dict(top_p=0.0), dict(top_p=1.5), dict(memory=zm[:, :5]),
           dict(memory=zm.to(torch.int32)), dict(uniform_noise=torch.zeros(3, 64, dtype=torch.int64)),
           dict(uniform_noise=torch.rand(2, 64)), dict(policy=zp[None]), dict(policy=zp.to(torch.int64))]
    return zp, zm, good, bad


@pytest.mark.usefixtures("triton_interpreter")
def test_every_bad_input_raises_check_inputs_error_after_its_class_was_cached():
    zp, zm, good, bad = _bad_calls()
    for change in bad:
        launcher.clear_launch_caches()
        dlc_sample(zp, zm, **good)
        dlc_sample(zp, zm, **good)  # the class is cached now
        kwargs = {**good, **change}
        policy, memory = kwargs.pop("policy", zp), kwargs.pop("memory", zm)
        with pytest.raises(ValueError) as expected:
            check_inputs(policy, memory, kwargs["lam"], kwargs["temperature"], kwargs["seed"], kwargs["offset"],
                         kwargs.get("tau"), kwargs.get("top_k", 0), kwargs.get("top_p", 1.0),
                         kwargs.get("uniform_noise"))
        with pytest.raises(ValueError) as raised:
            dlc_sample(policy, memory, **kwargs)
        assert str(raised.value) == str(expected.value), change


def test_the_cached_class_still_takes_the_fast_launch_with_the_first_calls_arguments(monkeypatch):
    zp, zm = _logits(5, 1000, seed=3)
    seeds = torch.arange(5)
    counters = torch.zeros(64, dtype=torch.int32)
    monkeypatch.setattr(launcher, "resolve_backend", lambda tensor, backend: "triton")  # as on a GPU
    monkeypatch.setattr(launcher, "_interpret", lambda: False)
    monkeypatch.setattr(launcher, "_num_sms", lambda index: 132)
    monkeypatch.setattr(launcher, "_arrival_counters", lambda r, d: counters)
    seen = []
    monkeypatch.setattr(CachedKernel, "handle", lambda self, key: None if key is None else "compiled")
    monkeypatch.setattr(CachedKernel, "launch", lambda self, h, grid, args, device: seen.append(
        (self.fn, tuple(grid), list(args))) or True)
    monkeypatch.setattr(CachedKernel, "launch_jit", lambda *a: pytest.fail("the JIT path was taken"))
    launcher.clear_launch_caches()
    outs = []
    for offset in (7, 7, 8):
        outs.append(dlc_sample(zp, zm, lam=0.5, seed=seeds, offset=offset, tau=0.5, return_entropy=True,
                               check_nan=False))
    assert len(seen) == 6  # threshold + stage 1, every call on the fast path

    def normalised(i):
        out = outs[i // 2]
        base, size = out.logprob_cal.data_ptr(), out.logprob_cal.untyped_storage().nbytes()
        return [("buffer", a - base) if isinstance(a, int) and 0 <= a - base < size else a for a in seen[i][2]]

    assert normalised(0) == normalised(2) and normalised(1) == normalised(3)
    diff = [i for i, (a, b) in enumerate(zip(normalised(3), normalised(5))) if a != b]
    assert diff == [14]  # only off_lo (the stage-1 kernel's offset argument) differs between offsets 7 and 8


def test_an_installed_launch_hook_is_seen_on_every_call(monkeypatch):
    from triton import knobs

    from megatron_rlvr.kernels.launch_cache import _hooks_active

    runtime = knobs.runtime
    assert not _hooks_active()
    hook = lambda *a, **k: None  # noqa: E731
    for name in ("launch_enter_hook", "launch_exit_hook"):
        chain = getattr(runtime, name)
        if chain is None or not hasattr(chain, "add"):  # an older Triton: a plain callable or None
            monkeypatch.setattr(runtime, name, hook)
            assert _hooks_active()
            monkeypatch.setattr(runtime, name, chain)
        else:
            chain.add(hook)
            try:
                assert _hooks_active()
            finally:
                chain.remove(hook)
        assert not _hooks_active()
