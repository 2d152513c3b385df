"""Rollout stage, token sampling: the DLC sampler's counter-based random numbers in plain PyTorch.

Bit-for-bit the generator of ``dlc_sample_kernel`` (Philox-4x32-10, Salmon et al. SC'11), so the reference
sampler and the vocabulary-parallel CPU path draw the very same uniforms as the Triton kernel. Arithmetic is
done on int64 tensors holding uint32 values; 32x32-bit products are split into 16-bit halves so that nothing
overflows int64.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57

CHUNK = 1024
QUARTER = 256
PHILOX_ROUNDS = 10


def _mulhilo(x: torch.Tensor, const: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of x * const for x in [0, 2**32)."""
    p_lo = x * (const & 0xFFFF)  # < 2**48
    p_hi = x * (const >> 16)  # < 2**48
    mid = p_hi + (p_lo >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (p_lo & 0xFFFF)


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: torch.Tensor,
               k1: torch.Tensor, rounds: int = PHILOX_ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox-4x32 on broadcastable int64 tensors of uint32 values; returns the four output words."""
    for _ in range(rounds):
        hi_a, lo_a = _mulhilo(c0, _ROUND_A)
        hi_b, lo_b = _mulhilo(c2, _ROUND_B)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _split64(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return v & _M32, (v >> 32) & _M32


def _to_uniform(x: torch.Tensor) -> torch.Tensor:
    # ((x >> 9) + 0.5) * 2**-23: exact in float32, never 0 or 1.
    return ((x >> 9).to(torch.float32) + 0.5) * (2.0 ** -23)


def dlc_uniforms(seed: torch.Tensor, offset: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """Per-id uniforms in (0, 1), float32 (B, N), of rows (seed, offset) at global ids (c3 = 0 stream).

    seed, offset: (B,) int64; vocab_ids: (N,) or (B, N) int64 global vocabulary ids.
    """
    k0, k1 = _split64(seed.to(torch.int64).view(-1, 1))
    c1, c2 = _split64(offset.to(torch.int64).view(-1, 1))
    ids = vocab_ids.to(torch.int64)
    ids = ids.view(1, -1) if ids.dim() == 1 else ids
    quad = (ids // CHUNK) * QUARTER + ids % QUARTER
    lane = (ids % CHUNK) // QUARTER
    words = philox4x32(quad, c1, c2, torch.zeros_like(c1), k0, k1)
    x = torch.zeros(seed.numel(), ids.shape[1], dtype=torch.int64, device=seed.device)
    for k, word in enumerate(words):
        x = torch.where(lane == k, word.expand_as(x), x)
    return _to_uniform(x)


def dlc_uniforms_in_chunk(seed: torch.Tensor, offset: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """Per-id uniforms (B, 1024) of the ids chunk * 1024 + 0..1023 of each row's chunk (B,): one Philox call per
    quad serves ids chunk * 1024 + k * 256 + j, so the four output words laid end to end are the chunk in order."""
    k0, k1 = _split64(seed.to(torch.int64).view(-1, 1))
    c1, c2 = _split64(offset.to(torch.int64).view(-1, 1))
    quad = chunk.to(torch.int64).view(-1, 1) * QUARTER + torch.arange(QUARTER, device=chunk.device)
    return _to_uniform(torch.cat(philox4x32(quad, c1, c2, torch.zeros_like(c1), k0, k1), dim=1))


def dlc_chunk_uniforms(seed: torch.Tensor, offset: torch.Tensor, chunk_ids: torch.Tensor,
                       part: torch.Tensor) -> torch.Tensor:
    """Per-chunk uniforms (B, C) of the first sampling level: counter (chunk id, offset, part), first word.

    part: (C,) int64, 1 for a whole chunk or its left part, 2 for the right part cut off by a shard boundary.
    """
    k0, k1 = _split64(seed.to(torch.int64).view(-1, 1))
    c1, c2 = _split64(offset.to(torch.int64).view(-1, 1))
    word = philox4x32(chunk_ids.to(torch.int64).view(1, -1), c1, c2, part.to(torch.int64).view(1, -1), k0, k1)[0]
    return _to_uniform(word)
