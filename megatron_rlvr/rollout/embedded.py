"""Rollout stage: the embedded engine, in-process generation with DLC for CPU runs and tests.

The policy and (optionally) the memory model are transformers `Qwen3ForCausalLM`s with KV caches. A chunk of up
to `batch_size` prompts is left-padded (attention mask + explicit position ids, so every row sees positions
0..len-1 as if alone), prefilled once, then decoded one token per step with both models stepped in lockstep on the
same token (with lam = 0 the memory model contributes nothing and is not run). Each step samples with
`megatron_rlvr.kernels.dlc_sample` (the Triton kernel on CUDA, its float32 PyTorch reference on CPU) from
pi_cal = softmax((z_policy - lam * z_memory) / T). The RNG stream of a response is (seed of the request, index of
the token within the response), the seed being `sequence_seed(sampling.seed, sampling.seed_offset + request index)`:
a request draws the same tokens whatever chunk, batch or engine it lands in and however long the other prompts are.
Rows that finished (stop token or length) leave the batch and their KV cache rows are dropped.
"""

from __future__ import annotations

import difflib
import math
from typing import Iterable, Optional, Sequence

import torch

from megatron_rlvr.qwen3.hf import build_qwen3
from megatron_rlvr.qwen3.shapes import Qwen3Shape, get_preset
from megatron_rlvr.rollout.engine import served_memory_shape
from megatron_rlvr.rollout.types import Generation, SamplingParams

_MASK64 = (1 << 64) - 1


def sequence_seed(base_seed: int, index: int) -> int:
    """The RNG seed of request `index` of a `generate` call: SplitMix64 of (base_seed, index), kept in 63 bits so
    it fits an int64 tensor. Requests of one call get decorrelated streams; equal inputs give equal seeds."""
    z = ((int(base_seed) & _MASK64) * 0x9E3779B97F4A7C15 + (int(index) + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class EmbeddedEngine:
    """`RolloutEngine` running transformers Qwen3 models in this process (see the module docstring); its weights
    arrive through `load_weights` (the in-process receiver of `megatron_rlvr.weight_sync.InProcessCopy`)."""

    def __init__(
        self,
        policy_shape: Qwen3Shape,
        memory_shape: Optional[Qwen3Shape] = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 256,
        init_seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"EmbeddedEngine(batch_size={batch_size}): must be >= 1; fix: use e.g. 256")
        if memory_shape is not None and memory_shape.vocab_size != policy_shape.vocab_size:
            raise ValueError(
                f"memory vocabulary ({memory_shape.vocab_size}) differs from the policy's ({policy_shape.vocab_size}); "
                "fix: DLC subtracts logits token by token, give the memory model the policy's vocabulary"
            )
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.policy_shape, self.memory_shape = policy_shape, memory_shape
        # weights arrive through load_weights; the seeded init only makes a fresh engine deterministic
        self.models = {"policy": build_qwen3(policy_shape, dtype, self.device, seed=init_seed)}
        if memory_shape is not None:
            self.models["memory"] = build_qwen3(memory_shape, dtype, self.device, seed=init_seed + 1)

    @property
    def policy(self):
        return self.models["policy"]

    @property
    def memory(self):
        return self.models.get("memory")

    # ------------------------------------------------------------------------------------------- weights
    def load_weights(self, model: str, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors with Hugging Face Qwen3 names into `model` ("policy" or "memory").

        Strict: every name must be a parameter of that model and every shape must match, else nothing is copied
        and a ValueError names the tensor and the fix. A subset of the parameters may be sent (bucketed pushes).
        """
        if model not in ("policy", "memory"):
            raise ValueError(f"load_weights(model={model!r}): use 'policy' or 'memory'")
        if model not in self.models:
            raise ValueError("load_weights('memory', ...): this engine has no memory model; fix: build it with "
                             "memory_shape (DLC needs one) or push only the policy")
        params = dict(self.models[model].named_parameters())
        staged = []
        for name, tensor in named_tensors:
            if name not in params:
                if name == "lm_head.weight" and self.models[model].config.tie_word_embeddings:
                    fix = "this preset ties embeddings: send model.embed_tokens.weight only"
                else:
                    close = difflib.get_close_matches(name, list(params), n=1)
                    fix = f"did you mean {close[0]!r}?" if close else "use Hugging Face Qwen3 parameter names"
                raise ValueError(f"load_weights({model!r}): unknown tensor {name!r}; fix: {fix}")
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"load_weights({model!r}): {name} has shape {tuple(tensor.shape)}, the engine's model expects "
                    f"{tuple(params[name].shape)}; fix: build the engine with the trainer's preset"
                )
            staged.append((params[name], tensor))
        with torch.no_grad():
            for param, tensor in staged:
                param.copy_(tensor.to(device=param.device, dtype=param.dtype))

    def release_memory(self) -> bool:
        """Nothing to give back: the embedded engine's models are small copies that the trainer does not need."""
        return False

    def resume_memory(self) -> None:
        """See `release_memory`."""

    def shutdown(self) -> None:
        self.models.clear()

    # ------------------------------------------------------------------------------------------- generation
    def _check(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> None:
        if not self.models:
            raise RuntimeError("EmbeddedEngine.generate after shutdown()")
        vocab = self.policy_shape.vocab_size
        if sampling.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens={sampling.max_new_tokens}: must be >= 1")
        if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
            raise ValueError(f"SamplingParams.temperature={sampling.temperature}: must be >= 0 (0 = greedy)")
        if sampling.lam < 0 or not math.isfinite(sampling.lam):
            raise ValueError(f"SamplingParams.lam={sampling.lam}: must be a finite value >= 0")
        if sampling.lam > 0 and self.memory is None:
            raise ValueError(f"SamplingParams.lam={sampling.lam} needs a memory model; fix: build the engine with "
                             "memory_shape, or sample with lam=0")
        limit = self.policy_shape.max_position_embeddings
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; fix: every prompt needs at least one token (e.g. BOS)")
            bad = [t for t in p if not 0 <= int(t) < vocab]
            if bad:
                raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary [0, {vocab})")
            if len(p) + sampling.max_new_tokens > limit:
                raise ValueError(f"prompt {i}: {len(p)} tokens + max_new_tokens {sampling.max_new_tokens} exceed "
                                 f"max_position_embeddings {limit}; fix: shorten the prompt or max_new_tokens")

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Generation]:
        """One response per prompt, in order, sampled from pi_cal with `sampling` (see the module docstring)."""
        self._check(prompts, sampling)
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [list(map(int, p)) for p in prompts[start : start + self.batch_size]]
            seeds = [sequence_seed(sampling.seed, sampling.seed_offset + start + j) for j in range(len(chunk))]
            out.extend(self._generate_chunk(chunk, seeds, sampling))
        return out

    def _forward(self, name: str, ids, mask, pos, cache):
        return self.models[name](input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True, logits_to_keep=1).logits[:, -1]  # (B, V)

    def _generate_chunk(self, prompts: list[list[int]], seeds: list[int], sampling: SamplingParams):
        from transformers import DynamicCache

        from megatron_rlvr.kernels import dlc_sample

        dev, B = self.device, len(prompts)
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        P = int(lens.max())
        ids = torch.zeros((B, P), dtype=torch.long, device=dev)  # left padding: pad value is masked out
        mask = torch.zeros((B, P), dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, P - len(p):] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # each row's positions start at 0 at its first real token
        use_memory = sampling.lam != 0 and self.memory is not None
        names = ["policy", "memory"] if use_memory else ["policy"]
        caches = {n: DynamicCache() for n in names}
        logits = {n: self._forward(n, ids, mask, pos, caches[n]) for n in names}

        stop = set(sampling.stop_token_ids)
        seed_t = torch.tensor(seeds, dtype=torch.long, device=dev)
        next_pos = lens.clone()  # (B,) position of the token each row feeds next
        rows = torch.arange(B, device=dev)  # original index of each live row
        tokens = [[] for _ in range(B)]
        lp_cal = [[] for _ in range(B)]
        lp_pol = [[] for _ in range(B)]
        ent = [[] for _ in range(B)]
        finish = ["length"] * B
        for t in range(sampling.max_new_tokens):
            s = dlc_sample(
                logits["policy"], logits["memory"] if use_memory else None, lam=float(sampling.lam),
                temperature=float(sampling.temperature), seed=seed_t[rows], offset=t, tau=sampling.tau,
                top_k=sampling.top_k, top_p=sampling.top_p, return_entropy=True,
            )
            live = []
            for j, (r, tok, a, b, e) in enumerate(zip(rows.tolist(), s.tokens.tolist(), s.logprob_cal.tolist(),
                                                      s.logprob_policy.tolist(), s.entropy.tolist())):
                tokens[r].append(tok)
                lp_cal[r].append(a)
                lp_pol[r].append(b)
                ent[r].append(e)
                if tok in stop:
                    finish[r] = "stop"
                else:
                    live.append(j)
            if not live or t == sampling.max_new_tokens - 1:
                break
            keep = torch.tensor(live, device=dev)
            if len(live) < len(rows):  # drop finished rows from the batch and from every KV cache
                for n in names:
                    caches[n].batch_select_indices(keep)
                mask = mask[keep]
            rows, step_tok = rows[keep], s.tokens[keep][:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_pos = next_pos[rows][:, None]
            next_pos[rows] += 1
            logits = {n: self._forward(n, step_tok, mask, step_pos, caches[n]) for n in names}
        return [
            Generation(prompt_ids=prompts[i], response_ids=tokens[i], logprob_cal=lp_cal[i], logprob_policy=lp_pol[i],
                       finish_reason=finish[i], entropy_cal=ent[i])
            for i in range(B)
        ]


def build_engine(cfg, *, engine_index: int, device: torch.device, dtype: torch.dtype, tokenizer=None,
                 run_dir=None) -> EmbeddedEngine:
    """The embedded engine of `cfg` (registered as "embedded" in `megatron_rlvr.registry.ENGINES`). It computes in
    `dtype` (`rollout.dtype`; auto: the policy's), so its log-probs match the trainer's."""
    memory_shape = served_memory_shape(cfg)
    return EmbeddedEngine(get_preset(cfg.policy.preset), memory_shape, device=device, dtype=dtype,
                          batch_size=cfg.rollout.batch_size)
