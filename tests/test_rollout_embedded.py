"""Rollout stage: the embedded engine (KV-cached lockstep decode of policy + memory with DLC sampling)."""

import math

import pytest
import torch

from megatron_rlvr.kernels import dlc_sample
from megatron_rlvr.qwen3.hf import build_qwen3
from megatron_rlvr.qwen3.shapes import get_preset
from megatron_rlvr.rollout.embedded import EmbeddedEngine, sequence_seed
from megatron_rlvr.rollout.types import SamplingParams

TINY, MEM = get_preset("tiny"), get_preset("tiny-mem")
PROMPTS = [[1, 97, 98, 99, 58], [1, 100, 58], [1, 101, 102, 103, 104, 105, 106, 58], [1, 98, 58]]


def sharpen(engine, name, factor):
    """Scale the output head so logits spread over several nats (random init gives near-uniform ones)."""
    model = engine.models[name]
    key = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    engine.load_weights(name, [(key, dict(model.named_parameters())[key].detach() * factor)])


@pytest.fixture(scope="module")
def engine():
    e = EmbeddedEngine(TINY, MEM, batch_size=3, init_seed=11)
    sharpen(e, "policy", 8.0)
    sharpen(e, "memory", 8.0)
    return e


@torch.no_grad()
def full_recompute(engine, prompt, sampling, index):
    """Naive generation: no KV cache, no padding; both models re-run on the whole sequence every step."""
    seed = sequence_seed(sampling.seed, index)
    ids, toks, lp_cal, lp_pol = list(prompt), [], [], []
    for t in range(sampling.max_new_tokens):
        x = torch.tensor([ids])
        zp = engine.policy(input_ids=x).logits[:, -1]
        zm = engine.memory(input_ids=x).logits[:, -1] if sampling.lam else None
        s = dlc_sample(zp, zm, lam=sampling.lam, temperature=sampling.temperature, seed=seed, offset=t,
                       tau=sampling.tau, top_k=sampling.top_k, top_p=sampling.top_p)
        tok = int(s.tokens[0])
        toks.append(tok)
        lp_cal.append(float(s.logprob_cal[0]))
        lp_pol.append(float(s.logprob_policy[0]))
        ids.append(tok)
        if tok in sampling.stop_token_ids:
            break
    return toks, lp_cal, lp_pol


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_new_tokens=8, temperature=0.0),
        SamplingParams(max_new_tokens=8, temperature=0.8, lam=0.5, seed=5),
        SamplingParams(max_new_tokens=8, temperature=1.3, lam=1.0, seed=9, top_k=20, top_p=0.9, tau=0.05),
    ],
    ids=["greedy", "dlc-T0.8", "dlc-topk-topp-tau"],
)
def test_kv_cached_batched_decode_matches_full_recompute(engine, sampling):
    gens = engine.generate(PROMPTS, sampling)
    for i, (p, g) in enumerate(zip(PROMPTS, gens)):
        toks, lp_cal, lp_pol = full_recompute(engine, p, sampling, i)
        assert g.prompt_ids == p
        assert g.response_ids == toks
        assert g.logprob_cal == pytest.approx(lp_cal, abs=2e-4)
        assert g.logprob_policy == pytest.approx(lp_pol, abs=2e-4)
        assert g.finish_reason == "length" and len(g.entropy_cal) == len(toks)


def test_ragged_batch_equals_one_by_one_generation(engine):
    sampling = SamplingParams(max_new_tokens=6, temperature=0.0)
    batched = engine.generate(PROMPTS, sampling)
    single = [engine.generate([p], sampling)[0] for p in PROMPTS]
    for b, s in zip(batched, single):
        assert b.response_ids == s.response_ids
        assert b.logprob_cal == pytest.approx(s.logprob_cal, abs=2e-4)


def test_sampled_tokens_do_not_depend_on_the_engine_batch_size(engine):
    sampling = SamplingParams(max_new_tokens=6, temperature=1.0, lam=0.7, seed=21, stop_token_ids=(2,))
    small = EmbeddedEngine(TINY, MEM, batch_size=1)
    small.load_weights("policy", engine.policy.named_parameters())
    small.load_weights("memory", engine.memory.named_parameters())
    prompts = PROMPTS * 2
    a, b = engine.generate(prompts, sampling), small.generate(prompts, sampling)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    for x, y in zip(a, b):
        assert x.logprob_cal == pytest.approx(y.logprob_cal, abs=2e-4)


def test_equal_seeds_reproduce_and_other_seeds_or_indices_differ(engine):
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, lam=0.5, seed=3)
    first = [g.response_ids for g in engine.generate(PROMPTS, sp)]
    assert first == [g.response_ids for g in engine.generate(PROMPTS, sp)]
    sp.seed = 4
    assert first != [g.response_ids for g in engine.generate(PROMPTS, sp)]
    same = engine.generate([PROMPTS[0]] * 4, sp)  # repeated prompts (a group) get different streams
    assert len({tuple(g.response_ids) for g in same}) > 1
    assert len({sequence_seed(0, i) for i in range(1000)}) == 1000 and 0 <= sequence_seed(2**40, 7) < 2**63


def test_lam_zero_equals_plain_policy_sampling_without_a_memory_model(engine):
    plain = EmbeddedEngine(TINY, None, batch_size=4)
    plain.load_weights("policy", engine.policy.named_parameters())
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, lam=0.0, seed=17)
    a, b = engine.generate(PROMPTS, sp), plain.generate(PROMPTS, sp)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    for x, y in zip(a, b):
        assert x.logprob_cal == pytest.approx(y.logprob_policy, abs=1e-5)  # pi_cal is the policy itself
        assert y.logprob_cal == pytest.approx(y.logprob_policy, abs=1e-5)


def chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Pearson chi-square goodness of fit at p = 1e-4 (Wilson-Hilferty quantile; bins with < 5 expected pooled)."""
    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([exp[big], exp[~big].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    df = int(keep.sum()) - 1
    crit = df * (1 - 2 / (9 * df) + 3.719 * math.sqrt(2 / (9 * df))) ** 3
    return stat < crit


@torch.no_grad()
def test_first_token_frequencies_follow_the_calibrated_distribution():
    # memory == policy, so pi_cal = softmax((1 - lam) z / T): DLC flattens what the policy over-samples
    e = EmbeddedEngine(TINY, TINY, batch_size=4096, init_seed=2)
    sharpen(e, "policy", 25.0)
    e.load_weights("memory", e.policy.named_parameters())
    prompt = [1, 97]
    z = e.policy(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    n = 3000
    counts = {}
    for lam in (0.0, 0.6):
        gens = e.generate([prompt] * n, SamplingParams(max_new_tokens=1, temperature=1.0, lam=lam, seed=1))
        c = torch.bincount(torch.tensor([g.response_ids[0] for g in gens]), minlength=128).float()
        expected = torch.softmax((1 - lam) * z, dim=0)
        assert chi_square_ok(c, expected), f"lam={lam}: frequencies do not follow softmax((1 - lam) z)"
        counts[lam] = c
    top = int(z.argmax())
    p0, p1 = torch.softmax(z, 0)[top], torch.softmax(0.4 * z, 0)[top]
    assert p1 < p0 - 0.1  # the check has power: the two distributions differ clearly
    assert counts[0.6][top] < counts[0.0][top] - 0.1 * n  # the policy's favourite is drawn less under DLC
    entropy = lambda c: float(-(c / n * torch.log((c / n).clamp_min(1e-12))).sum())  # noqa: E731
    assert entropy(counts[0.6]) > entropy(counts[0.0]) + 0.3


def test_stop_token_ends_each_row_independently(engine):
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    free = engine.generate(PROMPTS, greedy)
    stop_tok = free[0].response_ids[2]
    greedy.stop_token_ids = (stop_tok,)
    gens = engine.generate(PROMPTS, greedy)
    for f, g in zip(free, gens):
        if stop_tok in f.response_ids:
            cut = f.response_ids.index(stop_tok) + 1
            assert g.response_ids == f.response_ids[:cut] and g.finish_reason == "stop"
            assert len(g.logprob_cal) == len(g.logprob_policy) == cut
        else:
            assert g.response_ids == f.response_ids and g.finish_reason == "length"
    assert gens[0].response_ids[-1] == stop_tok and len(gens[0].response_ids) <= 3


def test_max_new_tokens_bounds_every_response(engine):
    gens = engine.generate(PROMPTS, SamplingParams(max_new_tokens=3, temperature=1.0, seed=2))
    assert all(len(g.response_ids) == 3 and g.finish_reason == "length" for g in gens)


def test_weight_update_changes_outputs_and_copies_values():
    e = EmbeddedEngine(TINY, None, batch_size=4, init_seed=0)
    sp = SamplingParams(max_new_tokens=8, temperature=0.0)
    before = [g.response_ids for g in e.generate(PROMPTS, sp)]
    other = build_qwen3(TINY, seed=123)
    e.load_weights("policy", other.state_dict().items())
    after = [g.response_ids for g in e.generate(PROMPTS, sp)]
    assert after != before
    for name, p in e.policy.named_parameters():
        assert torch.equal(p, dict(other.named_parameters())[name])
    ref = other.generate(torch.tensor([PROMPTS[0]]), do_sample=False, max_new_tokens=8, min_new_tokens=8,
                         pad_token_id=0, eos_token_id=None)
    assert after[0] == ref[0, len(PROMPTS[0]):].tolist()  # agrees with transformers' own greedy decoding


def test_weight_update_rejects_unknown_names_and_wrong_shapes_without_partial_copies():
    e = EmbeddedEngine(TINY, MEM, batch_size=4)
    q = e.policy.model.layers[0].self_attn.q_proj.weight
    snapshot = q.detach().clone()
    with pytest.raises(ValueError, match=r"unknown tensor 'model.layers.0.self_attn.q_proj.weights'; fix: did you "
                                         r"mean 'model.layers.0.self_attn.q_proj.weight'"):
        e.load_weights("policy", [("model.layers.0.self_attn.q_proj.weight", torch.zeros_like(q)),
                                    ("model.layers.0.self_attn.q_proj.weights", torch.zeros_like(q))])
    assert torch.equal(q, snapshot)
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(128,\), the engine's model expects \(64,\)"):
        e.load_weights("memory", [("model.norm.weight", torch.ones(128))])
    with pytest.raises(ValueError, match=r"use 'policy' or 'memory'"):
        e.load_weights("critic", [])


def test_tied_presets_have_no_lm_head_and_say_so():
    e = EmbeddedEngine(get_preset("tiny-tied"), None, batch_size=2)
    assert "lm_head.weight" not in dict(e.policy.named_parameters())
    with pytest.raises(ValueError, match=r"unknown tensor 'lm_head.weight'; fix: this preset ties embeddings"):
        e.load_weights("policy", [("lm_head.weight", torch.zeros(128, 128))])
    with pytest.raises(ValueError, match=r"this engine has no memory model"):
        e.load_weights("memory", [])


def test_bad_requests_are_rejected_with_the_fix():
    e = EmbeddedEngine(TINY, None, batch_size=2)
    with pytest.raises(ValueError, match=r"lam=0.5 needs a memory model"):
        e.generate(PROMPTS, SamplingParams(lam=0.5))
    with pytest.raises(ValueError, match=r"prompt 1 is empty"):
        e.generate([[1, 2], []], SamplingParams())
    with pytest.raises(ValueError, match=r"prompt 0 has token ids \[130\] outside the vocabulary \[0, 128\)"):
        e.generate([[1, 130]], SamplingParams())
    with pytest.raises(ValueError, match=r"exceed max_position_embeddings 256"):
        e.generate([[1] * 250], SamplingParams(max_new_tokens=16))
    with pytest.raises(ValueError, match=r"memory vocabulary \(64\) differs"):
        EmbeddedEngine(TINY, get_preset("tiny-mem", vocab_size=64))


def test_built_models_use_the_preset_rope_theta():
    model = build_qwen3(TINY, seed=0)
    assert model.config.rope_parameters["rope_theta"] == TINY.rope_theta == 1e6
    assert model.config.vocab_size == 128 and model.config.num_hidden_layers == 2
