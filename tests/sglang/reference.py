"""Transformers references for the SGLang DLC tests: pi_cal from two HF Qwen3 models, no KV cache."""

from __future__ import annotations

import torch


@torch.no_grad()
def next_logits(model, ids: list[int]) -> torch.Tensor:
    """(V,) float32 next-token logits of `ids` under an HF causal LM (full recompute, no cache)."""
    return model(torch.tensor([ids])).logits[0, -1].float()


@torch.no_grad()
def calibrated_logprobs(policy, memory, ids: list[int], lam: float, temperature: float = 1.0):
    """(log pi_cal, log pi_policy) over the vocabulary at `temperature` (docs/ALGORITHMS.md, "DLC")."""
    zp, zm = next_logits(policy, ids), next_logits(memory, ids)
    cal = torch.log_softmax((zp - lam * zm) / temperature, dim=-1)
    pol = torch.log_softmax(zp / temperature, dim=-1)
    return cal, pol


@torch.no_grad()
def greedy_dlc(policy, memory, prompt: list[int], lam: float, max_new_tokens: int, stop_ids=()):
    """Greedy decoding of argmax pi_cal; returns tokens, log pi_cal, log pi_policy (at T = 1), entropy."""
    ids = list(prompt)
    toks, lp_cal, lp_pol, ent = [], [], [], []
    for _ in range(max_new_tokens):
        cal, pol = calibrated_logprobs(policy, memory, ids, lam)
        t = int(torch.argmax(cal))
        toks.append(t)
        lp_cal.append(float(cal[t]))
        lp_pol.append(float(pol[t]))
        ent.append(float(-(cal.exp() * cal).sum()))
        ids.append(t)
        if t in stop_ids:
            break
    return toks, lp_cal, lp_pol, ent
