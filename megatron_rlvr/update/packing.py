"""Update stage: sequence packing (THD) of right-padded micro-batches for Megatron-Core.

A micro-batch of n right-padded rows (n, L) with real lengths ``lengths`` (prompt + response) becomes one packed
row (1, T), T = sum(lengths), with ``cu_seqlens = [0, l_0, l_0 + l_1, ...]``. Megatron-Core's GPTModel takes it as
the ``thd`` format through :class:`~megatron.core.packed_seq_params.PackedSeqParams`: RoPE restarts at each
sequence start (``cu_seqlens``) and attention is causal within each sequence only (Transformer-Engine's varlen
kernels, or the local spec's per-sequence SDPA in ``provider.SDPAttention``). No compute is spent on padding.

Per-token results of the packed row (T,) are put back into the (n, L) layout with zeros past each length, so loss
functions see the same shapes as on the padded path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass
class PackedRows:
    """n rows of an (n, L) batch packed into one (1, T) sequence (see module docstring)."""

    tokens: torch.Tensor  # (1, T) int64
    position_ids: torch.Tensor  # (1, T) int64, restarting at 0 for every sequence
    cu_seqlens: torch.Tensor  # (n + 1,) int32
    is_start: torch.Tensor  # (T,) bool: first token of a sequence
    flat_index: torch.Tensor  # (T,) int64: position of each packed token in the flattened (n * L) layout
    max_seqlen: int
    shape: tuple[int, int]  # (n, L)
    bounds: list[int]  # cu_seqlens as Python ints


    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    def to(self, device: torch.device) -> "PackedRows":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedRows(move(self.tokens), move(self.position_ids), move(self.cu_seqlens), move(self.is_start),
                          move(self.flat_index), self.max_seqlen, self.shape, self.bounds)

    def seq_params(self) -> PackedSeqParams:
        """Megatron's THD parameters for this pack (on the device of ``cu_seqlens``)."""
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=self.cu_seqlens, cu_seqlens_kv=self.cu_seqlens,
                                 max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)
        # The boundaries as Python ints, for attention that loops over sequences (provider.SDPAttention): reading
        # them from a GPU tensor in every layer would synchronise the host each time.
        params.host_bounds = self.bounds
        return params

    def next_token_targets(self) -> torch.Tensor:
        """(T,) the token each packed position predicts (the next token; 0 where the next is another sequence's)."""
        t = self.tokens[0]
        nxt = torch.cat([t[1:], t.new_zeros(1)])
        starts_next = torch.cat([self.is_start[1:], self.is_start.new_ones(1)])
        return torch.where(starts_next, torch.zeros_like(nxt), nxt)

    def token_values_to_rows(self, stats: torch.Tensor) -> torch.Tensor:
        """Per-position statistics of next-token predictions (T,) -> per-token values (n, L).

        Value [i, t] is the statistic of predicting token t of row i from its prefix: stats at packed position
        t - 1 of that row; 0 at t = 0 and past the row's length (as on the padded path at t = 0). Differentiable.
        """
        shifted = torch.cat([stats.new_zeros(1), stats[:-1]])
        vals = torch.where(self.is_start, torch.zeros_like(shifted), shifted)
        n, L = self.shape
        return stats.new_zeros(n * L).index_copy(0, self.flat_index, vals).view(n, L)


def lengths_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(n,) tokens each row needs for a loss on `mask`ed positions: 1 + the last True index (1 for empty rows).

    Causal attention makes positions past the last masked one irrelevant to the loss, so they need not be packed.
    """
    L = mask.shape[1]
    pos = torch.arange(1, L + 1).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.zeros_like(pos)).amax(dim=1).clamp(min=1)


def pack_rows(tokens: torch.Tensor, lengths: torch.Tensor) -> PackedRows:
    """Pack the first ``lengths[i]`` tokens of every row of `tokens` (n, L) into one sequence (CPU tensors)."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (n, L), got shape {tuple(tokens.shape)}")
    n, L = tokens.shape
    lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
    if lengths.shape != (n,):
        raise ValueError(f"lengths must have shape ({n},), got {tuple(lengths.shape)}")
    if n and (int(lengths.min()) < 1 or int(lengths.max()) > L):
        raise ValueError(f"every length must be in [1, {L}] (the padded row length), got "
                         f"min {int(lengths.min())} max {int(lengths.max())}")
    tokens = tokens.cpu()
    cu = torch.zeros(n + 1, dtype=torch.long)
    cu[1:] = lengths.cumsum(0)
    T = int(cu[-1])
    row = torch.repeat_interleave(torch.arange(n), lengths)  # (T,)
    pos = torch.arange(T) - cu[:-1][row]
    flat_index = row * L + pos
    packed = tokens.reshape(-1)[flat_index].unsqueeze(0)
    return PackedRows(tokens=packed, position_ids=pos.unsqueeze(0), cu_seqlens=cu.to(torch.int32),
                      is_start=pos == 0, flat_index=flat_index, max_seqlen=int(lengths.max()) if n else 0,
                      shape=(n, L), bounds=cu.tolist())
