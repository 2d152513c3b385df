"""Rollout stage, SGLang sampler: DLC token sampling inside SGLang through `megatron_rlvr.kernels.dlc_sample`.

The DLC model (models/dlc_qwen3.py) hands the memory model's next-token logits to this sampler next to the
policy's. Per row the sampler draws y ~ pi_cal = softmax((z_policy - lam * z_memory) / T) with the fused kernel
(its PyTorch reference on CPU) and returns, per generated token, log pi_cal(y), log pi_policy(y) at the same
temperature and the entropy of pi_cal. Those ride back to the caller in SGLang's `meta_info` (keys in
protocol.py), since SGLang's own `output_token_logprobs` has room for one distribution only.

Per-request options (lam, tau, seed) travel in SGLang's `custom_params`, which SGLang only forwards to the
sampler for requests that carry a custom logit processor: `DLCRequestParams` is that carrier, a processor
that leaves logits unchanged (the engine starts SGLang with enable_custom_logit_processor=True).

Batches without the memory-logits entry (any plain model in the same process) go to SGLang's stock sampler
unchanged; the entry None (the policy-only DLC model, for runs with DLC off) samples the policy alone here.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch

from sglang.srt.layers.sampler import Sampler, register_sampler_backend
from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor
from sglang.srt.sampling.sampling_params import TOP_K_ALL

from megatron_rlvr.rollout.sglang.protocol import (
    CPU_SAMPLER_BACKEND, MEMORY_LOGITS_KEY, OUT_STATS, PARAM_LAM, PARAM_SEED,
    PARAM_TAU, SAMPLER_BACKEND,
)

logger = logging.getLogger(__name__)


class DLCRequestParams(CustomLogitProcessor):
    """Carrier of per-request DLC options in `custom_params`; leaves the logits as they are."""

    def __call__(self, logits: torch.Tensor, custom_param_list: Optional[List[Dict[str, Any]]] = None) -> torch.Tensor:
        return logits


def _row_options(custom_params: Optional[List[Optional[dict]]], rows: int, generator_seed: int):
    """(lam, tau, seed) per row; requests without DLC options sample the policy alone (lam = 0)."""
    lam, tau, seed = [0.0] * rows, [None] * rows, [None] * rows
    if custom_params is not None:
        for i, p in enumerate(custom_params[:rows]):
            if p:
                lam[i] = float(p.get(PARAM_LAM, 0.0))
                t = p.get(PARAM_TAU)
                tau[i] = None if t is None else float(t)
                s = p.get(PARAM_SEED)
                seed[i] = None if s is None else int(s)
    missing = [i for i, s in enumerate(seed) if s is None]
    if missing:  # unseeded requests still get independent draws
        g = torch.Generator().manual_seed(generator_seed)
        fresh = torch.randint(0, 2**62, (len(missing),), generator=g).tolist()
        for i, s in zip(missing, fresh):
            seed[i] = s
    return lam, tau, seed


class TokenStats:
    """One decode step's per-row (log pi_cal, log pi_policy, entropy), as SGLang's `customized_info` value.

    SGLang reads it row by row, for each request, only after the step's outputs reached the host (it waits on the
    step's copy-done event first), so the asynchronous device-to-host copy is complete by the first access. Rows
    are handed out as Python tuples, converted once per step: SGLang copies every numpy element it is given and
    later pickles each one kept, and numpy 3-vectors made that slow (batch 256 x 128 tokens, SGLang's collection
    loop and one pickle, on a CPU: 0.66 ms per step and 268 ms to pickle, against 0.42 ms and 10 ms for tuples).
    """

    __slots__ = ("_host", "_rows")

    def __init__(self, host: torch.Tensor):
        self._host = host  # (rows, 3) float32, on the CPU (pinned when it came from a GPU)
        self._rows = None

    def __len__(self) -> int:
        return self._host.shape[0]

    def __getitem__(self, i: int) -> tuple:
        if self._rows is None:
            self._rows = list(map(tuple, self._host.tolist()))
        return self._rows[i]


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the GPU (pinned staging + asynchronous copy)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class DLCSampler(Sampler):
    """SGLang Sampler that samples DLC batches with `dlc_sample` and delegates every other batch to SGLang's."""

    def __init__(self):
        super().__init__()
        self._draws = 0
        self._options = None  # (custom_params list, its length, rows, (lam_t, seed_t, tau, no tau)) of the last batch

    def _batch_options(self, sampling_info, rows: int, device: torch.device):
        """Per-row (lam, seed) on the device, tau, and whether no row has tau; reused while the batch is unchanged.

        Building them walks every request's options in Python (~0.3 ms per decode step at batch 256); SGLang keeps
        one custom_params list while a batch runs and replaces it (filter) or extends it (merge) when requests
        finish or join, so the list's identity and length tell whether the options can have changed. The cached
        list is held, so its id cannot be reused by another list.
        """
        params = sampling_info.custom_params
        size = None if params is None else len(params)
        cached = self._options
        if cached is not None and cached[0] is params and cached[1] == size and cached[2] == rows:
            return cached[3]
        self._draws += 1
        lam, tau, seed = _row_options(params, rows, self._draws)
        options = (_to_device(torch.tensor(lam, dtype=torch.float32), device),
                   _to_device(torch.tensor(seed, dtype=torch.int64), device), tau, all(t is None for t in tau))
        self._options = (params, size, rows, options)
        return options

    def forward(self, logits_output, sampling_info, return_logprob, top_logprobs_nums, token_ids_logprobs,
                positions):
        info = logits_output.customized_info
        if not info or MEMORY_LOGITS_KEY not in info:
            return super().forward(logits_output, sampling_info, return_logprob, top_logprobs_nums,
                                   token_ids_logprobs, positions)
        from megatron_rlvr.kernels import dlc_sample  # the kernel package imports triton: load lazily

        policy = logits_output.next_token_logits  # (B, V), after SGLang's penalties, grammar mask and logit bias
        rows = policy.shape[0]
        memory = info[MEMORY_LOGITS_KEY]  # None: a policy-only model (DLC off), sampled with the same kernel
        if memory is not None:
            memory = memory[:rows]  # CUDA-graph buffers are padded to the captured batch size
        if memory is not None and memory.untyped_storage().data_ptr() == policy.untyped_storage().data_ptr():
            # Host-side pointer check, no device sync. One storage means one stack's logits overwrote the other's
            # (SGLang's shared decode-graph logits buffer): sampling would silently use the wrong distribution.
            raise RuntimeError(
                "DLC sampler: the memory logits share storage with the policy logits, so one model's logits "
                "overwrote the other's. The memory stack must not write into SGLang's shared logits buffer "
                "(DLCQwen3ForCausalLM._memory_logits clears LogitsMetadata.next_token_logits_buffer); check that "
                "this SGLang version still takes it from there.")
        policy = self._apply_foreign_processors(policy, sampling_info)

        device = policy.device
        # Nothing here may wait for the GPU: SGLang's overlap scheduler prepares the next step while this one runs,
        # and one device sync per step exposed that host work (2.6x the policy-only step time at batch 1 on an H100).
        # So: host lists go up through pinned memory, per-row flags stay on the device, and the outputs come down
        # with an asynchronous copy that SGLang's copy_done event orders before it reads the batch result.
        lam_t, seed_t, tau, no_tau = self._batch_options(sampling_info, rows, device)
        offset_t = positions.view(-1)[:rows].to(torch.int64)
        temps = sampling_info.temperatures.view(-1)[:rows].to(torch.float32)
        # SGLang encodes greedy as top_k == 1 (temperature 0 is rewritten to top_k=1, T=1); dlc_sample as T <= 0.
        if sampling_info.is_all_greedy:
            temperature = torch.zeros_like(temps)
        else:
            temperature = torch.where(sampling_info.top_ks.view(-1)[:rows] == 1, torch.zeros_like(temps), temps)

        # dlc_sample takes tau / top-k / top-p per call: one launch per distinct setting (one in practice).
        groups: Dict[tuple, List[int]] = {}
        if not (sampling_info.need_top_k_sampling or sampling_info.need_top_p_sampling) and no_tau:
            groups[(None, 0, 1.0)] = list(range(rows))  # the rollout case: one launch, no per-row grouping
        elif sampling_info.need_top_k_sampling or sampling_info.need_top_p_sampling:
            top_ks = sampling_info.top_ks.tolist()  # a device sync, only for requests that ask for top-k/top-p
            top_ps = sampling_info.top_ps.tolist()
            for i in range(rows):
                k = 0 if (top_ks[i] >= TOP_K_ALL or top_ks[i] <= 1) else int(top_ks[i])
                groups.setdefault((tau[i], k, float(top_ps[i])), []).append(i)
        else:
            for i in range(rows):
                groups.setdefault((tau[i], 0, 1.0), []).append(i)
        tokens = torch.empty(rows, dtype=torch.int64, device=device)
        stats = torch.empty(rows, 3, dtype=torch.float32, device=device)  # log pi_cal, log pi_policy, entropy
        for (g_tau, g_k, g_p), idx in groups.items():
            sel = None if len(idx) == rows else _to_device(torch.tensor(idx), device)
            pick = (lambda t: t) if sel is None else (lambda t: t.index_select(0, sel))
            # check_nan=False: the check is a device sync. A row with NaN/inf logits or nothing allowed comes back
            # as token -1 with NaN log-probs; it is fed on as token 0 and the NaN log-probs make the engine
            # reject the whole response (engine.to_generation) with an error naming the cause.
            mem = None if memory is None else pick(memory)
            out = dlc_sample(pick(policy), mem, lam=pick(lam_t), temperature=pick(temperature), seed=pick(seed_t),
                             offset=pick(offset_t), tau=g_tau, top_k=g_k, top_p=g_p, return_entropy=True,
                             check_nan=False)
            row_stats = torch.stack([out.logprob_cal, out.logprob_policy, out.entropy], dim=1)
            if sel is None:
                tokens, stats = out.tokens, row_stats
            else:
                tokens[sel] = out.tokens
                stats[sel] = row_stats
        tokens = tokens.clamp_min(0)

        # A new dict: under CUDA graphs the incoming one is the captured output, reused by every replay. SGLang
        # takes row i for request i once the pinned host copy has landed (TokenStats).
        host = stats.to("cpu", non_blocking=True) if device.type == "cuda" else stats
        logits_output.customized_info = {OUT_STATS: TokenStats(host)}
        if return_logprob:
            self._write_sglang_logprobs(logits_output, policy, memory, lam_t, temperature, tokens,
                                        top_logprobs_nums, token_ids_logprobs)
        batch_next_token_ids = tokens.to(torch.int32)
        self._sync_token_ids_across_tp(batch_next_token_ids, sampling_info)
        return batch_next_token_ids

    def compute_logprobs_only(self, logits_output, sampling_info, top_logprobs_nums, token_ids_logprobs) -> None:
        # Prefill-only scoring requests never sample: drop the memory logits so they are not returned as info.
        if logits_output.customized_info:
            logits_output.customized_info.pop(MEMORY_LOGITS_KEY, None)
        super().compute_logprobs_only(logits_output, sampling_info, top_logprobs_nums, token_ids_logprobs)

    @staticmethod
    def _apply_foreign_processors(policy: torch.Tensor, sampling_info) -> torch.Tensor:
        """Apply any custom logit processor other than the DLC carrier (to the policy logits)."""
        procs = sampling_info.custom_logit_processor if sampling_info.has_custom_logit_processor else None
        if not procs:
            return policy
        for processor, mask in procs.values():
            if isinstance(processor, DLCRequestParams):
                continue
            idx = mask.nonzero(as_tuple=True)[0]
            if idx.numel():
                policy[mask] = processor(policy[mask], [sampling_info.custom_params[i] for i in idx.tolist()])
        return policy

    def _write_sglang_logprobs(self, logits_output, policy, memory, lam, temperature, tokens, top_logprobs_nums,
                               token_ids_logprobs) -> None:
        """SGLang's own logprob fields (only when a request asks for return_logprob): log pi_cal, unmasked.

        Same convention as SGLang's sampler: log_softmax of the (calibrated) logits / T before truncation, at
        T = 1 for greedy rows. This materialises (B, V) and is off the rollout path.
        """
        t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).view(-1, 1)
        z = (policy.float() if memory is None else policy.float() - lam.view(-1, 1) * memory.float()) / t
        logprobs = torch.log_softmax(z, dim=-1)
        result = self.output_logprob_processor.compute_logprobs(logprobs, top_logprobs_nums, token_ids_logprobs,
                                                                tokens)
        result.write_output_to(logits_output)


def register() -> None:
    """Install DLCSampler as SGLang's sampler under "dlc" and (for the CPU engine) "pytorch". Idempotent."""
    from sglang.srt.layers import sampler as sgl_sampler

    for name in (SAMPLER_BACKEND, CPU_SAMPLER_BACKEND):
        factory = sgl_sampler._CUSTOM_SAMPLER_FACTORIES.get(name)
        if factory is not DLCSampler:
            register_sampler_backend(name, DLCSampler)
