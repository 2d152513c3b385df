"""Rollout stage: where the rollout engines live and which prompts each one serves.

Colocated placement: `rollout.tp` GPUs (ranks) per engine, so `world_size / rollout.tp` engines and every rank
belongs to one; engine k is hosted by global rank `k * rollout.tp` (the process that starts it and talks to it).
Dedicated placement (`rollout.server_urls`): trainer rank 0 hosts the one client, which spreads requests over
every server by load. A step's prompt groups are split into contiguous, near-equal shards, one per engine host, so
a group of G responses never splits across engines. The embedded engine follows the same layout, so CPU runs with
several ranks exercise the same code as GPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RolloutLayout:
    """Engine hosts among `world_size` trainer ranks."""

    world_size: int
    # ranks per engine (colocated); ignored for dedicated servers
    tp: int = 1
    # attached servers: one client, on rank 0
    dedicated: bool = False

    def __post_init__(self) -> None:
        if self.tp < 1 or (not self.dedicated and self.world_size % self.tp):
            raise ValueError(f"rollout.tp={self.tp} must be >= 1 and divide the world size {self.world_size}")

    @property
    def hosts(self) -> list[int]:
        """Global ranks that host an engine (or the servers' client), in shard order."""
        return [0] if self.dedicated else list(range(0, self.world_size, self.tp))

    @property
    def num_engines(self) -> int:
        return len(self.hosts)

    def engine_index(self, rank: int) -> int | None:
        """Which engine `rank` hosts, or None."""
        hosts = self.hosts
        return hosts.index(rank) if rank in hosts else None

    def shard(self, num_groups: int, engine: int) -> range:
        """Group indices of a step's `num_groups` that `engine` generates (contiguous; sizes differ by <= 1)."""
        n, k = self.num_engines, engine
        base, extra = divmod(num_groups, n)
        start = k * base + min(k, extra)
        return range(start, start + base + (1 if k < extra else 0))
