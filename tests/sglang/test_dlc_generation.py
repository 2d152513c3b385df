"""The DLC model generates in SGLang exactly as the transformers reference of pi_cal (docs/ALGORITHMS.md, "DLC")."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rlvr.rollout.types import SamplingParams

from .reference import calibrated_logprobs, greedy_dlc

PROMPTS = [[5, 17, 99, 3], [42], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 11, 12, 13]]
LOGPROB_TOL = 1e-5


def _check_against_reference(gens, hf_models, lam, max_new_tokens, stop_ids=()):
    for prompt, g in zip(PROMPTS, gens):
        toks, lp_cal, lp_pol, ent = greedy_dlc(hf_models["policy"], hf_models["memory"], prompt, lam,
                                               max_new_tokens, stop_ids)
        assert g.prompt_ids == prompt
        assert g.response_ids == toks
        assert max(abs(a - b) for a, b in zip(g.logprob_cal, lp_cal)) < LOGPROB_TOL
        assert max(abs(a - b) for a, b in zip(g.logprob_policy, lp_pol)) < LOGPROB_TOL
        assert max(abs(a - b) for a, b in zip(g.entropy_cal, ent)) < 1e-4


def test_greedy_dlc_matches_transformers_token_for_token_with_both_logprobs(engine, hf_models):
    gens = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0.0, lam=0.7))
    assert [g.finish_reason for g in gens] == ["length"] * len(PROMPTS)
    assert all(len(g.response_ids) == 10 for g in gens)
    _check_against_reference(gens, hf_models, lam=0.7, max_new_tokens=10)
    # lambda > 0 really calibrates: pi_cal differs from the policy at the sampled tokens
    assert any(abs(a - b) > 1e-3 for g in gens for a, b in zip(g.logprob_cal, g.logprob_policy))


def test_lambda_zero_is_plain_policy_decoding(engine, hf_models):
    gens = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0, lam=0.0))
    _check_against_reference(gens, hf_models, lam=0.0, max_new_tokens=8)
    for g in gens:  # pi_cal is the policy itself
        assert g.logprob_cal == pytest.approx(g.logprob_policy, abs=1e-6)


def test_stop_token_ends_the_response_and_is_kept(engine, hf_models):
    prompt = PROMPTS[0]
    toks, *_ = greedy_dlc(hf_models["policy"], hf_models["memory"], prompt, 0.7, 10)
    stop = toks[3]
    first = toks.index(stop)
    (g,) = engine.generate([prompt], SamplingParams(max_new_tokens=10, temperature=0.0, lam=0.7,
                                                    stop_token_ids=(stop,)))
    assert g.finish_reason == "stop"
    assert g.response_ids == toks[: first + 1]
    assert len(g.logprob_cal) == len(g.logprob_policy) == len(g.response_ids)


@pytest.mark.parametrize("lam", [0.0, 0.8])
def test_sampled_tokens_follow_pi_cal_and_report_its_logprobs(engine, hf_models, lam):
    """Many one-token draws from one prompt: frequencies match pi_cal (chi-square) and each token's reported
    log-probs are the reference's at that token."""
    prompt, n, temperature = [9, 30, 2, 77], 600, 1.3
    gens = engine.generate([prompt] * n, SamplingParams(max_new_tokens=1, temperature=temperature, lam=lam, seed=5))
    cal, pol = calibrated_logprobs(hf_models["policy"], hf_models["memory"], prompt, lam, temperature)
    toks = torch.tensor([g.response_ids[0] for g in gens])
    for g in gens[:50]:
        t = g.response_ids[0]
        assert abs(g.logprob_cal[0] - float(cal[t])) < LOGPROB_TOL
        assert abs(g.logprob_policy[0] - float(pol[t])) < LOGPROB_TOL
    counts = torch.bincount(toks, minlength=cal.numel()).double()
    expected = cal.double().exp() * n
    big = expected >= 5  # pool the rare tokens into one bin, as the chi-square approximation needs
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    chi2 = float(((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum())
    dof = int(obs.numel()) - 1
    # 99.9% quantile of chi-square via the Wilson-Hilferty approximation: a fair sampler fails 1 in 1000 runs
    z = 3.09
    limit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < limit, f"chi2={chi2:.1f} > {limit:.1f} (dof={dof})"


def test_equal_seeds_redraw_equal_tokens_and_other_seeds_differ(engine):
    prompts = [[3, 1, 4, 1, 5]] * 6
    sp = SamplingParams(max_new_tokens=6, temperature=1.0, lam=0.5, seed=11)
    a = [g.response_ids for g in engine.generate(prompts, sp)]
    b = [g.response_ids for g in engine.generate(prompts, sp)]
    c = [g.response_ids for g in engine.generate(prompts, SamplingParams(**{**sp.__dict__, "seed": 12}))]
    assert a == b
    assert a != c
    assert len({tuple(x) for x in a}) > 1  # responses to a repeated prompt are distinct draws


def test_prefix_cache_hit_reuses_the_memory_stack_kv_correctly(engine, hf_models):
    """A second request sharing a long prefix is served from the radix cache and still matches the reference,
    which it could not if the memory stack's cached KV were missing or taken from the policy's layers."""
    base = [(i * 37 + 11) % 128 for i in range(40)]
    engine.flush_cache()
    engine.generate([base], SamplingParams(max_new_tokens=1, temperature=0.0, lam=1.0))
    longer = base + [21, 22, 23]
    from megatron_rlvr.rollout.sglang.engine import sglang_sampling_params
    from megatron_rlvr.rollout.sglang.sampler import DLCRequestParams

    sp = SamplingParams(max_new_tokens=6, temperature=0.0, lam=1.0)
    (raw,) = engine._engine.generate(input_ids=[longer], sampling_params=[sglang_sampling_params(sp, 0)],
                                     custom_logit_processor=[DLCRequestParams().to_str()])
    assert raw["meta_info"]["cached_tokens"] >= len(base) - 1
    toks, lp_cal, lp_pol, _ = greedy_dlc(hf_models["policy"], hf_models["memory"], longer, 1.0, 6)
    assert raw["output_ids"] == toks
    stats = raw["meta_info"]["dlc_token_stats"]  # per token: log pi_cal, log pi_policy, entropy
    assert max(abs(r[0] - b) for r, b in zip(stats, lp_cal)) < LOGPROB_TOL
    assert max(abs(r[1] - b) for r, b in zip(stats, lp_pol)) < LOGPROB_TOL


def test_the_engine_reports_the_kv_pool_sglang_sized_at_its_start(engine):
    """What a restart is judged by (run.runtime warns when a restarted engine got a much smaller pool)."""
    tokens = engine.kv_pool_tokens()
    assert isinstance(tokens, int) and tokens >= max(len(p) for p in PROMPTS) + 16
