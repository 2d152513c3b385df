"""Shared test helpers (multi-rank launcher)."""
