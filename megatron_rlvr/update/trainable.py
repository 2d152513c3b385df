"""Update stage: one Qwen3 model under Megatron-Core (DDP, optimizer, pipeline schedule, dist-checkpointing).

A :class:`TrainableModel` owns one model (the policy or DLC's memory model) in its own parallel layout
(``megatron_rlvr.distributed.parallel``): its GPTModel chunks wrapped in Megatron DDP, Megatron's optimizer (Adam(W) or SGD,
grad clipping) with a linear lr warm-up (Megatron's ``OptimizerParamScheduler``), and
``config.finalize_model_grads_func`` set, so that tensor-parallel replicated parameters (the qk-layernorms) get
their gradients all-reduced (without it TP training drifts silently; MEGATRON-NOTES.md). Every public method
enters the model's layout itself.

Token log-probabilities are computed vocab-parallel from the sharded logits (no rank ever holds (b, s, V)):
``logprobs[i, t] = log softmax(z(tokens[i, :t]) / T)[tokens[i, t]]`` for t >= 1 and 0 at t = 0, likewise the
entropy of that distribution.

Data contract of the multi-rank calls: every rank of one model-parallel (TP x PP) group passes the same tokens /
micro-batches; different data-parallel ranks pass their own share (the numbers of micro-batches may differ).
Micro-batches are right-padded (n, L) rows, or, when they carry ``lengths``, packed into one THD sequence
(``update.packing``); the per-token results come back in the (n, L) layout either way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_rlvr.distributed.parallel import ParallelContext, set_seed, use_deterministic_algorithms
from megatron_rlvr.qwen3.model_info import read_model_info, write_model_info
from megatron_rlvr.qwen3.provider import build_gpt_model, resolve_dtype, transformer_config
from megatron_rlvr.qwen3.shapes import Qwen3Shape
from megatron_rlvr.update.logprobs import token_stats
from megatron_rlvr.update.packing import PackedRows, host_to_device, pack_rows

if TYPE_CHECKING:  # annotations only: the config tree sits above the stages (docs/ARCHITECTURE.md)
    from megatron_rlvr.config import ModelConfig, OptimConfig

LossFn = Callable[[torch.Tensor, Optional[torch.Tensor], dict], tuple[torch.Tensor, dict]]


# --------------------------------------------------------------------------------------- vocab-parallel math
def vocab_parallel_token_stats(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, with_entropy: bool, impl: str = "torch"
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-token log-probs (and entropies) of `tokens` under next-token logits sharded over the TP vocab.

    logits: (b, s, V / tp) of this TP rank, position t predicting token t + 1; tokens: (b, s) int64.
    Returns (b, s) fp32 tensors with 0 at t = 0. Differentiable; chunked over tokens, so no (b * s, V / tp) float32
    tensor is ever materialised (``update.logprobs``).
    """
    # Position s - 1 predicts nothing; it gets a dummy target and its result is dropped (no copy of the logits).
    target = torch.cat([tokens[:, 1:], tokens.new_zeros(tokens.shape[0], 1)], dim=1)
    lp, ent = token_stats(logits, target, temperature, with_entropy, _tp_group(), impl=impl)
    shift = lambda x: torch.nn.functional.pad(x[:, :-1], (1, 0))  # noqa: E731
    return shift(lp), None if ent is None else shift(ent)


def packed_token_stats(
    logits: torch.Tensor, packed: PackedRows, temperature: float, with_entropy: bool, impl: str = "torch"
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`vocab_parallel_token_stats` of a packed micro-batch: logits (1, T, V / tp) -> (n, L) per-token values
    in the rows' padded layout (0 at t = 0 and past each row's length)."""
    lp, ent = token_stats(logits[0], packed.next_token_targets(), temperature, with_entropy, _tp_group(),
                          impl=impl)
    return packed.token_values_to_rows(lp), None if ent is None else packed.token_values_to_rows(ent)


def _stat(v: Any, like: torch.Tensor) -> torch.Tensor:
    """A loss function's statistic as a float64 0-d tensor on `like`'s device (no host sync for tensors)."""
    if torch.is_tensor(v):
        return v.detach().reshape(()).to(torch.float64)
    return torch.tensor(float(v), dtype=torch.float64, device=like.device)


def _tp_group():
    return parallel_state.get_tensor_model_parallel_group() if parallel_state.model_parallel_is_initialized() else None


def _init_sgd_state(opt: torch.optim.Optimizer, config: Any = None) -> None:
    for group in opt.param_groups:
        if group.get("momentum", 0) == 0:
            continue
        for p in group["params"]:
            if opt.state[p].get("momentum_buffer") is None:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p.data)


def _patch_torch_adam_step_loading() -> None:
    """Work around megatron-core 0.16.1 loading a 'fully_reshardable' distributed-optimizer checkpoint into torch's
    AdamW (the fallback without apex/TE, i.e. every CPU run): ``load_state_dict`` gives each parameter state the
    per-parameter ``step`` of torch's AdamW, then ``_set_main_param_and_optimizer_states`` copies every state key
    from the checkpoint tensors, which never hold ``step`` (KeyError). We hand it the step that is already set."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states
    if getattr(original, "_rlvr_patched", False):
        return

    def set_states(self, model_param, tensors):
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            step = self.optimizer.state[main_param].get("step")
            if step is not None:
                tensors = {**tensors, "step": step}
        return original(self, model_param, tensors)

    set_states._rlvr_patched = True
    DistributedOptimizer._set_main_param_and_optimizer_states = set_states


class TrainableModel:
    """One model (its chunks on this rank), its optimizer and lr schedule, in layout `name` of `ctx`.

    Attributes: ``name``, ``cfg`` (ModelConfig), ``optim_cfg``, ``shape`` (Qwen3Shape), ``model_chunks``
    (the unwrapped GPTModel chunks of this rank: one, or ``vpp`` for interleaved pipelines), ``ddp_chunks``,
    ``optimizer`` (Megatron), ``scheduler``, ``config`` (TransformerConfig), ``ctx``.
    Construction initialises weights from ``cfg.init_seed`` and, if ``cfg.init_from`` is set, loads them from
    that checkpoint (without optimizer state).
    """

    def __init__(self, name: str, cfg: ModelConfig, optim_cfg: OptimConfig, ctx: ParallelContext,
                 shape: Optional[Qwen3Shape] = None):
        self.name, self.cfg, self.optim_cfg, self.ctx = name, cfg, optim_cfg, ctx
        self.shape = shape or cfg.shape()
        if ctx.device.type == "cpu":
            use_deterministic_algorithms()  # bit-reproducible CPU runs (kill/resume tests compare exactly)
            if cfg.logprob_impl == "triton" and os.environ.get("TRITON_INTERPRET", "0") != "1":
                raise ValueError(f"{name}.logprob_impl=triton needs CUDA (the fused log-prob kernels run on the GPU, "
                                 f"or on the CPU under TRITON_INTERPRET=1 for tests); this run is on the CPU: set "
                                 f"{name}.logprob_impl=torch")
        with ctx.layout(name) as lay:
            if (lay.tp, lay.pp, lay.vpp) != (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp):
                raise ValueError(
                    f"layout {name!r} of the parallel context is tp={lay.tp} pp={lay.pp} vpp={lay.vpp} but "
                    f"the model config asks for tp={cfg.parallel.tp} pp={cfg.parallel.pp} vpp={cfg.parallel.vpp}"
                    "; build the context from the same config"
                )
            self.layout = lay
            self.dtype = resolve_dtype(cfg.dtype)
            # Pipelines send a shape header per micro-batch, so micro-batches may differ in (n, L). (The
            # dispatcher setting only satisfies a MoE-only check: Qwen3 dense has no experts.)
            overrides = {"variable_seq_lengths": True, "moe_token_dispatcher_type": "alltoall"} if lay.pp > 1 else {}
            self.config = transformer_config(self.shape, cfg, self.dtype, **overrides)
            set_seed(cfg.init_seed)
            self.model_chunks: list[GPTModel] = self._build_chunks()
            self.ddp_chunks = self._wrap_ddp()
            self.optimizer = self._build_optimizer()
            self.scheduler = self._build_scheduler()
            self.steps_done = 0
        if cfg.init_from:
            self.load_checkpoint(cfg.init_from, load_optimizer=False)

    # ------------------------------------------------------------------------------------------ construction
    def _build_chunks(self) -> list[GPTModel]:
        vpp = self.layout.vpp
        chunks = []
        for i in range(vpp):
            vp = i if vpp > 1 else None
            pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp)
            post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp)
            chunk = build_gpt_model(self.shape, self.cfg, pre_process=pre, post_process=post, vp_stage=vp,
                                    config=self.config)
            if self.dtype != torch.float32:
                # Megatron-LM casts whole models with Float16Module; without it the local spec's torch norms stay
                # fp32 inside a bf16 model, and the mixed-precision optimizer's checkpoint (which maps only its
                # bf16 params) fails with "Param id N does not match any model sharded param". Parameters only:
                # buffers such as RoPE frequencies keep their precision.
                for p in chunk.parameters():
                    if p.is_floating_point() and p.dtype != self.dtype:
                        p.data = p.data.to(self.dtype)
            chunks.append(chunk.to(self.ctx.device))
        return chunks

    def _wrap_ddp(self) -> list[DistributedDataParallel]:
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=self.layout.distributed_optimizer,
            check_for_nan_in_grad=False,
        )
        ddp = [
            DistributedDataParallel(self.config, ddp_config, chunk, disable_bucketing=i > 0)
            for i, chunk in enumerate(self.model_chunks)
        ]
        # The schedules call these: grad all-reduce deferred to the last micro-batch, then DP/TP/embedding
        # gradient finalisation (TP-replicated qk-layernorm grads, tied embeddings across pipeline stages).
        self.config.no_sync_func = [c.no_sync for c in ddp] if len(ddp) > 1 else ddp[0].no_sync
        self.config.finalize_model_grads_func = finalize_model_grads
        return ddp

    def _build_optimizer(self):
        o = self.optim_cfg
        if self.layout.distributed_optimizer and o.optimizer != "adam":
            raise ValueError(
                f"{self.name}: megatron's distributed optimizer supports only adam, got optimizer={o.optimizer!r}; "
                f"set optimizer.{self.name}.optimizer=adam or {self.name}.parallel.distributed_optimizer=false"
            )
        mcfg = MegatronOptimizerConfig(
            optimizer=o.optimizer,
            lr=o.lr,
            min_lr=0.0,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            sgd_momentum=o.sgd_momentum,
            clip_grad=o.clip_grad,
            bf16=self.dtype == torch.bfloat16,
            fp16=self.dtype == torch.float16,
            params_dtype=self.dtype,
            use_distributed_optimizer=self.layout.distributed_optimizer,
        )
        optimizer = get_megatron_optimizer(mcfg, self.ddp_chunks)
        if o.optimizer == "sgd":
            # Megatron only knows how to pre-create Adam's state; loading an SGD checkpoint needs the momentum
            # buffers to exist. A zero buffer is what torch's SGD starts from (buf = 0 * m + grad = grad).
            for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
                if sub.init_state_fn is None:
                    sub.init_state_fn = _init_sgd_state
        return optimizer

    def _build_scheduler(self) -> OptimizerParamScheduler:
        o = self.optim_cfg
        # A linear warm-up, then constant lr or a decay to min_lr_ratio * lr over lr_decay_steps; the scheduler is
        # stepped *before* each optimizer step, so step k (1-based) uses lr * min(1, k / warmup) during warm-up.
        decay = o.lr_decay_style if o.lr_decay_steps else "constant"
        return OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.lr * o.min_lr_ratio if decay != "constant" else 0.0,
            lr_warmup_steps=o.lr_warmup_steps,
            lr_decay_steps=o.lr_decay_steps if decay != "constant" else o.lr_warmup_steps + 1,
            lr_decay_style=decay, start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=1,
            wd_incr_style="constant",
        )

    # ------------------------------------------------------------------------------------------ helpers
    def _to_device(self, mb: dict) -> dict:
        out = {}
        for k, v in mb.items():
            if torch.is_tensor(v):
                v = host_to_device(v, self.ctx.device)
            elif isinstance(v, PackedRows):
                v = v.to(self.ctx.device)
            out[k] = v
        return out

    @staticmethod
    def _prepare(micro_batches: list[dict]) -> list[dict]:
        """Pack every micro-batch that carries ``lengths`` (n,): its rows become one THD sequence (``_packed``)."""
        return [{**mb, "_packed": pack_rows(mb["tokens"], mb["lengths"])} if "lengths" in mb else mb
                for mb in micro_batches]

    def _forward_chunk(self, model, mb: dict) -> torch.Tensor:
        packed = mb.get("_packed")
        if packed is not None:
            # One (1, T) row; attention and RoPE restart at each cu_seqlens boundary. Logits (1, T, V/tp).
            return model(packed.tokens, packed.position_ids, None, packed_seq_params=packed.seq_params())
        tokens = mb["tokens"]
        b, s = tokens.shape
        position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
        # Causal attention without a mask tensor (SDPA / TE causal); logits (b, s, V/tp) on the last stage.
        return model(tokens, position_ids, None)

    def _token_stats(self, logits: torch.Tensor, mb: dict, temperature: float, with_entropy: bool):
        packed = mb.get("_packed")
        impl = self.cfg.logprob_impl
        if packed is not None:
            return packed_token_stats(logits, packed, temperature, with_entropy, impl)
        return vocab_parallel_token_stats(logits, mb["tokens"], temperature, with_entropy, impl)

    def run_schedule(self, micro_batches: list[dict], step_fn, forward_only: bool) -> list:
        n_chunks = len(self.ddp_chunks)
        iters = [iter(micro_batches) for _ in range(n_chunks)]
        first = micro_batches[0]
        # Pipelines exchange (seq, micro-batch, hidden) activations; a packed micro-batch is one row of T tokens.
        seq, mbs = (first["_packed"].num_tokens, 1) if "_packed" in first else tuple(first["tokens"].shape[::-1])
        return get_forward_backward_func()(
            forward_step_func=step_fn,
            data_iterator=iters if n_chunks > 1 else iters[0],
            model=self.ddp_chunks,
            num_microbatches=len(micro_batches),
            seq_length=seq,
            micro_batch_size=mbs,
            forward_only=forward_only,
        )

    def _broadcast_from_last_stage(self, obj: Any) -> Any:
        """Send a python object from the last pipeline stage to every stage of this rank's pipeline."""
        if self.layout.pp == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                   group=parallel_state.get_pipeline_model_parallel_group())
        return box[0]

    @staticmethod
    def _check_micro_batches(micro_batches: list[dict]) -> None:
        if not micro_batches:
            raise ValueError("train_step needs at least one micro-batch")
        for i, mb in enumerate(micro_batches):
            tok = mb.get("tokens")
            if not torch.is_tensor(tok) or tok.dim() != 2 or tok.dtype != torch.long:
                raise ValueError(f"micro-batch {i}: 'tokens' must be an int64 tensor of shape (n, L)")
            lengths = mb.get("lengths")
            if lengths is not None and (not torch.is_tensor(lengths) or lengths.shape != tok.shape[:1]):
                raise ValueError(f"micro-batch {i}: 'lengths' must be a tensor of shape ({tok.shape[0]},)")

    # ------------------------------------------------------------------------------------------ public API
    def reset_rng(self, seed: int) -> None:
        """Reseed python/numpy/torch (and Megatron's TP CUDA RNG on GPU) in this model's layout."""
        with self.ctx.layout(self.name):
            set_seed(seed)

    @torch.no_grad()
    def forward_logprobs(self, tokens: torch.Tensor, temperature: float, micro_batch_size: int,
                         with_entropy: bool = False, lengths: Optional[torch.Tensor] = None,
                         micro_batches: Optional[list[torch.Tensor]] = None, pack: bool = True,
                         ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-token log-probs (N, L) (and entropies) of `tokens` (N, L) at `temperature`, on every rank (CPU).

        Runs the pipeline schedule forward-only in micro-batches of `micro_batch_size` sequences, or over the row
        index sets `micro_batches` (a partition of range(N), e.g. token-budgeted); the last stage's results are
        broadcast to all stages. Values at t = 0 are 0. With `lengths` (N,), row i counts its first ``lengths[i]``
        tokens only (its values past them are 0): each micro-batch is packed (THD) if `pack`, else its rows are cut
        to its longest row.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be an int64 (N, L) tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        n = tokens.shape[0]
        groups = micro_batches if micro_batches is not None else list(torch.arange(n).split(micro_batch_size))
        order = torch.cat(groups) if groups else torch.arange(0)
        if not torch.equal(order.sort().values, torch.arange(n)):
            raise ValueError("micro_batches must partition the rows range(N) of tokens")
        mbs = []
        for g in groups:
            if lengths is None:
                mbs.append({"tokens": tokens[g]})
                continue
            width = int(lengths[g].max()) if len(g) else 1
            extra = {"lengths": lengths[g]} if pack else {"row_lengths": lengths[g]}
            mbs.append({"tokens": tokens[g][:, :width], **extra})
        mbs = self._prepare(mbs)
        full = tokens.shape[1]
        widen = lambda x: torch.nn.functional.pad(x, (0, full - x.shape[1]))  # noqa: E731  (back to (n, L))

        def step_fn(data_iterator, model):
            mb = self._to_device(next(data_iterator))
            out = self._forward_chunk(model, mb)

            def collect(logits):
                lp, ent = self._token_stats(logits, mb, temperature, with_entropy)
                if lengths is not None and "_packed" not in mb:  # cut padded rows: 0 past each length
                    keep = torch.arange(lp.shape[1], device=lp.device) < mb["row_lengths"].unsqueeze(1)
                    lp, ent = lp * keep, None if ent is None else ent * keep
                # Kept on the device (one copy to the host at the end, not a sync per micro-batch).
                return logits.new_zeros(()), {"logprobs": lp, "entropy": ent}

            return out, collect

        with self.ctx.layout(self.name):
            for m in self.ddp_chunks:
                m.eval()
            outs = self.run_schedule(mbs, step_fn, forward_only=True)
            if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
                inverse = torch.argsort(order)  # back to the caller's row order
                lp = torch.cat([widen(o["logprobs"]) for o in outs]).cpu()[inverse]
                ent = torch.cat([widen(o["entropy"]) for o in outs]).cpu()[inverse] if with_entropy else None
                result = (lp, ent)
            else:
                result = None
            for m in self.ddp_chunks:
                m.train()
            return self._broadcast_from_last_stage(result)

    def train_step(self, micro_batches: list[dict], loss_fn: LossFn, temperature: float = 1.0,
                   with_entropy: bool = False) -> dict[str, float]:
        """One optimizer step over `micro_batches` (this data-parallel rank's share of the batch).

        For each micro-batch (a dict with at least ``tokens`` (n, L) int64; its other tensors are moved to the
        device; with ``lengths`` (n,) its rows are packed into one THD sequence of their first lengths[i] tokens,
        and the per-token values past a row's length are 0) the model computes per-token log-probs (n, L) (and
        entropies if `with_entropy`) with grad and
        calls ``loss, stats = loss_fn(logprobs, entropy, mb)``.

        Normalisation: the gradient is that of the SUM of `loss` over all micro-batches of all data-parallel
        ranks, so `loss_fn` must normalise globally (e.g. divide by the token count of the whole batch). Megatron's
        schedule divides each micro-batch loss by the number of micro-batches and DDP averages over
        data-parallel ranks; we multiply by both beforehand, so nothing is normalised twice.

        Returns python floats: ``loss`` (the sum above), every key of `stats` averaged over all micro-batches of
        all data-parallel ranks, ``grad_norm`` (before clipping), ``lr`` and ``update_successful``.
        The same dict is returned on every rank.
        """
        self._check_micro_batches(micro_batches)
        micro_batches = self._prepare(micro_batches)
        with self.ctx.layout(self.name):
            dp = parallel_state.get_data_parallel_world_size()
            # Data-parallel ranks may hold different numbers of (token-budgeted) micro-batches: each rank undoes
            # its own schedule's 1 / num_microbatches.
            scale = len(micro_batches) * dp

            def step_fn(data_iterator, model):
                mb = self._to_device(next(data_iterator))
                out = self._forward_chunk(model, mb)

                def loss_func(logits):
                    lp, ent = self._token_stats(logits, mb, temperature, with_entropy)
                    loss, stats = loss_fn(lp, ent, mb)
                    if loss.dim() != 0:
                        raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
                    # Statistics stay on the device until the step ends: a float() here would sync every
                    # micro-batch and keep the host from queueing the next one while the GPU works.
                    report = {k: _stat(v, loss) for k, v in stats.items()}
                    report["loss"] = loss.detach().to(torch.float64)
                    return loss * scale, report

                return out, loss_func

            for c in self.ddp_chunks:
                c.zero_grad_buffer()
            self.optimizer.zero_grad()
            self.scheduler.step(1)  # set this step's lr (warm-up) before stepping
            reports = self.run_schedule(micro_batches, step_fn, forward_only=False)
            ok, grad_norm, _ = self.optimizer.step()
            self.steps_done += 1
            summary = None
            if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
                keys = sorted(reports[0])
                one = torch.ones((), dtype=torch.float64, device=self.ctx.device)
                rows = torch.stack([torch.stack([r[k].to(self.ctx.device) for k in keys] + [one]) for r in reports])
                sums = rows.sum(0)
                dist.all_reduce(sums, group=parallel_state.get_data_parallel_group())
                sums = sums.tolist()
                count = sums.pop()  # micro-batches over all data-parallel ranks
                summary = {k: v / count for k, v in zip(keys, sums)}
                summary["loss"] = sums[keys.index("loss")]
            summary = self._broadcast_from_last_stage(summary)
            summary.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                           lr=float(self.optimizer.param_groups[0]["lr"]), update_successful=float(bool(ok)))
            return summary

    # ------------------------------------------------------------------------------------------ checkpoints
    def _model_sharded_state_dict(self) -> dict:
        if len(self.model_chunks) == 1:
            return self.model_chunks[0].sharded_state_dict()
        # Interleaved chunks reuse local layer indices; nest them (checkpoint keys are global anyway).
        return {f"chunk{i}": c.sharded_state_dict() for i, c in enumerate(self.model_chunks)}

    def sharded_state_dict(self, with_optimizer: bool = True, is_loading: bool = False) -> dict:
        """{"model": ..., "optimizer": ... (if with_optimizer), "scheduler": ..., "steps_done": int}."""
        with self.ctx.layout(self.name):
            model_sd = self._model_sharded_state_dict()
            out = {"model": model_sd}
            if with_optimizer:
                # 'fully_reshardable': the distributed optimizer saves a canonical per-parameter state (gathered
                # on DP rank 0), loadable at any layout; megatron's default format fails in 0.16.1. On CPU the
                # gather must use the gloo groups ("mem_efficient"); the other path calls Tensor.cuda().
                metadata = {
                    "distrib_optim_sharding_type": "fully_reshardable",
                    "distrib_optim_fully_reshardable_mem_efficient": self.ctx.device.type == "cpu",
                }
                out["optimizer"] = self.optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                                     metadata=metadata)
                out["scheduler"] = self.scheduler.state_dict()
                out["steps_done"] = self.steps_done
            return out

    def save_checkpoint(self, ckpt_dir: str | os.PathLike, with_optimizer: bool = True) -> None:
        """Save with megatron dist-checkpointing into `ckpt_dir` (created; must be empty), plus model_info.json.

        Collective over all ranks. Loadable at any other TP/PP layout. Writes nothing outside `ckpt_dir`.
        """
        ckpt_dir = Path(ckpt_dir)
        with self.ctx.layout(self.name):
            if dist.get_rank() == 0:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            dist_checkpointing.save(self.sharded_state_dict(with_optimizer=with_optimizer), str(ckpt_dir))
            if dist.get_rank() == 0:
                write_model_info(ckpt_dir, self.cfg.preset, self.shape, has_optimizer=with_optimizer,
                                 steps_done=self.steps_done, dtype=str(self.dtype).replace("torch.", ""))
            dist.barrier()

    def load_checkpoint(self, ckpt_dir: str | os.PathLike, load_optimizer: bool = True) -> None:
        """Load a checkpoint written by :meth:`save_checkpoint` (any TP/PP layout). Collective over all ranks."""
        saved = read_model_info(ckpt_dir)
        saved_shape, info = saved.shape, saved.raw
        if saved_shape != self.shape:
            raise ValueError(f"checkpoint {ckpt_dir} holds shape {saved_shape}, this model is {self.shape}")
        if load_optimizer and not info.get("has_optimizer", False):
            raise ValueError(f"checkpoint {ckpt_dir} has no optimizer state; pass load_optimizer=False")
        with self.ctx.layout(self.name), torch.no_grad():  # optimizer state loads in place (notes)
            if load_optimizer:
                self._materialise_distributed_optimizer_state()
            request = self.sharded_state_dict(with_optimizer=load_optimizer, is_loading=True)
            loaded = dist_checkpointing.load(request, str(ckpt_dir))
            model_sd = loaded["model"]
            if len(self.model_chunks) == 1:
                self.model_chunks[0].load_state_dict(model_sd, strict=True)
            else:
                for i, c in enumerate(self.model_chunks):
                    c.load_state_dict(model_sd[f"chunk{i}"], strict=True)
            if load_optimizer:
                self.optimizer.load_state_dict(loaded["optimizer"])
                self.scheduler.load_state_dict(loaded["scheduler"])
                self.steps_done = int(loaded["steps_done"])
            else:
                # Fresh optimizer on loaded weights: refresh fp32 main copies of low-precision params.
                self.optimizer.reload_model_params()

    def _materialise_distributed_optimizer_state(self) -> None:
        """Create Adam state in a fresh distributed optimizer so a checkpoint can be loaded into it.

        With torch's AdamW (no apex/TE), megatron's DistributedOptimizer.state_dict() needs a step count, which
        only exists after a first step. Megatron's own dummy step (zero grads) is taken with lr = 0, so the
        weights do not move (AdamW's decoupled decay scales with lr); the loaded state then replaces it.
        """
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

        _patch_torch_adam_step_loading()
        for sub in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            if isinstance(sub, DistributedOptimizer) and len(sub.optimizer.state) == 0:
                lrs = [g["lr"] for g in sub.optimizer.param_groups]
                for g in sub.optimizer.param_groups:
                    g["lr"] = 0.0
                with torch.enable_grad():
                    sub._init_optimizer_states_with_dummy_values()
                for g, lr in zip(sub.optimizer.param_groups, lrs):
                    g["lr"] = lr

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """This rank's parameters (all chunks)."""
        for c in self.model_chunks:
            yield from c.parameters()
