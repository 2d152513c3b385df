"""Compare two runs' metrics.jsonl for bit-identity, ignoring wall-clock keys.

A refactor that moves code must not change what a run computes: every logged number except the timings
(`time/*`, `throughput/*`) must be equal to the last bit. Usage:

    python tools/compare_metrics.py runs/before/metrics.jsonl runs/after/metrics.jsonl

Exit status 0 when identical (prints how many steps and keys were compared), 1 with the first differences.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# wall-clock measurements differ between any two runs; everything else is a function of config and seed
TIMING_PREFIXES = ("time/", "throughput/")


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def differences(before: list[dict], after: list[dict]) -> list[str]:
    """One line per difference: a step count mismatch, a key present on one side only, or an unequal value."""
    out = []
    if len(before) != len(after):
        out.append(f"step count: {len(before)} before, {len(after)} after")
    for i, (b, a) in enumerate(zip(before, after)):
        keys_b = {k for k in b if not k.startswith(TIMING_PREFIXES)}
        keys_a = {k for k in a if not k.startswith(TIMING_PREFIXES)}
        for k in sorted(keys_b ^ keys_a):
            out.append(f"line {i}: key {k} only {'before' if k in keys_b else 'after'}")
        for k in sorted(keys_b & keys_a):
            if b[k] != a[k] and not (b[k] != b[k] and a[k] != a[k]):  # NaN == NaN for this purpose
                out.append(f"line {i} (step {b.get('step')}): {k} {b[k]!r} -> {a[k]!r}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-3], file=sys.stderr)
        return 2
    before, after = load(Path(argv[0])), load(Path(argv[1]))
    diff = differences(before, after)
    if diff:
        print(f"{len(diff)} difference(s):")
        print("\n".join(diff[:40]))
        return 1
    n_keys = len({k for row in before for k in row if not k.startswith(TIMING_PREFIXES)})
    print(f"identical: {len(before)} steps, {n_keys} keys (timing keys {', '.join(TIMING_PREFIXES)} ignored)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
