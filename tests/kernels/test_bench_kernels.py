"""The kernel micro-benchmark's CPU-side behaviour: a clear refusal without a GPU, and its table and plot."""

import pytest
import torch

from megatron_rlvr.kernels import bench
from megatron_rlvr.kernels import dlc_sample_launcher as launcher


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_bench_kernels_refuses_clearly_without_a_gpu(capsys):
    assert bench.main(["--batches", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bench_table_and_plot_show_every_batch(tmp_path, capsys):
    rows = [dict(batch=b, vocab=151936, dtype="bfloat16", unfused_dlc_ms=2.0 * b, unfused_policy_ms=1.0 * b,
                 fused_ms=0.1 * b, fused_eager_ms=0.2 * b, fused_tb_s=2.0, copy_tb_s=3.0, pct_of_copy=66.7,
                 speedup_vs_dlc=20.0, speedup_vs_policy=10.0) for b in (1, 32)]
    bench._print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "B" and [line.split()[0] for line in lines[1:]] == ["1", "32"]
    bench._plot(rows, tmp_path / "plot.png", "test device")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_bench_table_shows_each_baseline_ratio_and_flags_a_baseline_that_wins(capsys):
    rows = [dict(batch=b, vocab=151936, dtype="bfloat16", unfused_dlc_ms=2.0, unfused_policy_ms=1.0, fused_ms=0.1,
                 fused_eager_ms=0.2, fused_tb_s=2.0, copy_tb_s=3.0, pct_of_copy=66.7, speedup_vs_dlc=20.0,
                 speedup_vs_policy=10.0, compile_default_ms=0.5, flashinfer_policy_ms=fi, **extra)
            for b, fi, extra in ((1, 0.05, {}), (256, 0.2, {"compile_max_autotune_no_cudagraphs_ms": 0.3}))]
    losses = bench._print_table(rows)
    out = capsys.readouterr().out
    assert "FlashInfer pol ms (x)" in out and "compile max-at ms (x)" in out and "(  5.0x)" in out
    assert losses == ["B=1: FlashInfer pol 0.0500 ms <= fused 0.1000 ms"]


def test_variant_table_shows_each_variant_and_its_time_relative_to_the_first(capsys):
    rows = [dict(batch=b, vocab=151936, dtype="bfloat16", copy_tb_s=4.0, fused_lean_ms=0.05 * b, pct_of_copy_lean=80.0,
                 fused_plain_ms=0.06 * b, pct_of_copy_plain=66.7) for b in (64, 256)]
    bench.print_variant_table(rows, ["lean", "plain"])
    lines = capsys.readouterr().out.splitlines()
    assert "lean ms (% copy)" in lines[2] and "x plain" in lines[2]
    assert lines[3].split()[0] == "64" and lines[3].split()[-1] == "1.200" and "( 80.0%)" in lines[3]
    assert [line.split()[0] for line in lines[3:5]] == ["64", "256"]
    assert lines[5].startswith("lean: time = ") and lines[6].startswith("plain: time = ")


def test_fixed_cost_fit_recovers_the_intercept_and_rate_of_a_one_pass_kernel():
    # 12 us per call plus the bytes at 3.8 TB/s, at the benchmark's shapes.
    rows = [dict(batch=b, vocab=151936, dtype="bfloat16",
                 fused_ms=(12e-6 + 2 * b * 151936 * 2 / 3.8e12) * 1e3) for b in (1, 64, 256, 1024)]
    fixed, rate = bench.fixed_cost_fit(rows)
    assert abs(fixed - 12e-6) < 1e-9 and abs(rate / 3.8e12 - 1) < 1e-6
    assert bench.fixed_cost_fit(rows[:2]) is None  # one batch >= 64: no line


def test_an_unknown_variant_is_refused_before_any_timing():
    with pytest.raises(SystemExit, match="fast"):
        bench._use_variant(launcher, "fast")


def test_the_compile_baseline_compiles_every_mode_and_batch_afresh_instead_of_falling_back_to_eager(monkeypatch):
    # Session 11 on the H200: one compiled function had seen 2 modes x 5 batches, dynamo hit its recompile limit
    # and the B = 1024 "compile" column timed eager code. A fresh compile per (mode, shape) never recompiles.
    from megatron_rlvr.kernels.bench_baselines import compiled_dlc, unfused_dlc

    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    for batch in range(1, 11):  # more shapes than dynamo's default recompile_limit (8)
        for mode in ("default", "max-autotune-no-cudagraphs"):
            zp, zm = torch.randn(batch, 17), torch.randn(batch, 17)
            torch.manual_seed(batch)
            tok, lp_cal, lp_pol = compiled_dlc(mode, backend="eager")(zp, zm, 0.5, 1.0)
            torch.manual_seed(batch)
            ref = unfused_dlc(zp, zm, 0.5, 1.0)
            assert torch.equal(tok, ref[0]) and torch.allclose(lp_cal, ref[1]) and torch.allclose(lp_pol, ref[2])


def test_the_host_table_says_how_busy_the_hosts_cpus_were(capsys):
    from megatron_rlvr.kernels.bench_baselines import print_host_table

    rows = [dict(style=s, batch=1, load_avg_1min=load, fast_us=30.0, fast_cpu_us=30.0, fast_drained_us=30.1,
                 jit_us=90.0, jit_cpu_us=90.0, jit_drained_us=90.2, speedup=3.0, fast_path_used=True)
            for s, load in (("embedded engine", 0.5), ("sglang sampler", 7.25))]
    print_host_table(rows)
    out = capsys.readouterr().out
    assert "host load average (1 min) while timing: 7.2 on" in out  # the busiest moment of the table
    assert out.count("True") == 2 and "embedded engine" in out


def test_same_bytes_copy_table_puts_a_copy_of_equal_bytes_beside_the_fused_kernel(capsys):
    rows = [dict(batch=b, vocab=151936, dtype="bfloat16", fused_ms=0.01 + 0.0002 * b,
                 same_bytes_copy_ms=0.004 + 0.0002 * b) for b in (64, 256, 1024)]
    for r in rows:
        r["pct_of_same_bytes_copy"] = 100 * r["same_bytes_copy_ms"] / r["fused_ms"]
    bench.print_same_bytes_table(rows)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [line.split()[0] for line in lines] == ["64", "256", "1024"]
    assert lines[1].split()[-1] == f"{(0.004 + 0.0512) / (0.01 + 0.0512):.3f}"
    assert "copy: time = 4.0 us" in out  # the fit recovers the copy's own fixed part
    bench.print_same_bytes_table([dict(batch=1, fused_ms=1.0)])  # rows of a run without it: nothing printed
    assert capsys.readouterr().out == ""
