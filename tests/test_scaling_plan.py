"""tools/scaling_plan.py's expected rollout time: decode steps cost the bytes they read (both models' weights and
every running sequence's KV cache in both), calibrated on one measured bench row."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("scaling_plan", Path(__file__).resolve().parents[1] / "tools" /
                                               "scaling_plan.py")
plan = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan)

BENCH = {"policy": "qwen3-1.7b", "memory": "qwen3-0.6b", "tokens": "[256, 517]",
         "sglang_dlc_on_rollout_tokens_per_s": "24282", "sglang_dlc_on_policy_update_s": "4.2793",
         "sglang_dlc_on_memory_update_s": "2.1766", "push_s": "0.223", "push_bytes": "19822620672"}


def test_qwen3_0p6b_and_1p7b_cache_the_same_kv_bytes_per_token():
    assert plan.kv_bytes_per_token("qwen3-0.6b") == plan.kv_bytes_per_token("qwen3-1.7b") == 28 * 2 * 8 * 128 * 2
    assert plan.kv_bytes_per_token("qwen3-8b") == 36 * 2 * 8 * 128 * 2


def test_the_model_gives_back_the_bench_rollout_when_applied_to_the_bench_itself():
    # the bench: 256 sequences of 5 prompt + 512 new tokens, 24282 tokens/s -> 256 * 512 / 24282 s
    row = {"policy": "qwen3-1.7b", "memory": "qwen3-0.6b", "seqs_per_engine": 256, "max_new_tokens": 512,
           "engines": 1, "gpus": 1, "policy_params": plan.params("qwen3-1.7b"),
           "memory_params": plan.params("qwen3-0.6b"), "push_bytes_per_engine": 1}
    e = plan.expected(row, BENCH, prompt_tokens=2.5)  # mean context (5 + 512) / 2 as the calibration assumes
    assert e["rollout_s"] == pytest.approx(256 * 512 / 24282, rel=1e-9)


def test_at_rl_batches_the_kv_cache_outweighs_the_weights_so_more_sequences_cost_more():
    weights_only = plan.decode_step_bytes("qwen3-8b", "qwen3-1.7b", 0, 0)
    with_kv = plan.decode_step_bytes("qwen3-8b", "qwen3-1.7b", 64, 256 + 4096 / 2)
    assert with_kv > 2 * weights_only
    row = plan.plan("qwen3_8b_iac_dlc", nodes=1)
    half = {**row, "seqs_per_engine": row["seqs_per_engine"] // 2}
    assert plan.expected(half, BENCH)["rollout_s"] < plan.expected(row, BENCH)["rollout_s"]
