"""The kernel micro-benchmark's CPU-side behaviour: a clear refusal without a GPU, and its table and plot."""

import pytest
import torch

from megatron_rlvr.kernels import bench


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
