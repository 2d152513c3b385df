"""Rewrite `megatron_rlvr/config/tree.py` fields declared the old way (a `# help` comment above
`name: type = default`) into `name: type = opt(default, help="help")`, the form `describe_tree` reads.

For branches started before the help moved into field metadata: after taking such a branch's tree.py, run
    python tools/migrate_config_help.py megatron_rlvr/config/tree.py
then `pytest tests/test_config_help.py`. Fields already declared with opt() are left as they are, so running it
twice changes nothing. A field with neither a comment nor opt() stops the script with its name.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WIDTH = 120  # the project's line length
FIELD = re.compile(r"^    (\w+): ([^=]+?)(?: = (.+))?$")  # a dataclass field at class-body indent


def _literal(s: str) -> str:
    if '"' not in s:
        return f'"{s}"'
    if "'" not in s:
        return f"'{s}'"
    return '"' + s.replace('"', '\\"') + '"'


def _pieces(text: str, room: int) -> list[str]:
    """`text` split at spaces into string pieces whose literals fit in `room` columns (the space ends a piece)."""
    pieces, cur = [], ""
    for word in text.split(" "):
        cand = f"{cur} {word}" if cur else word
        if len(_literal(cand + " ")) > room and cur:
            pieces.append(cur + " ")
            cur = word
        else:
            cur = cand
    return [*pieces, cur]


def _field_lines(name: str, tp: str, default: str | None, text: str) -> list[str]:
    if default is None:
        args = ""
    elif default.startswith("field(default_factory=") and default.endswith(")"):
        args = "factory=" + default[len("field(default_factory="):-1] + ", "
    elif "field(" in default:
        raise SystemExit(f"{name}: only field(default_factory=...) can be migrated; write opt(...) by hand")
    else:
        args = default + ", "
    head = f"    {name}: {tp} = opt({args}help="
    room = WIDTH - len(head) - 1
    lines_needed = len(_pieces(text, room))
    while room > 20 and len(_pieces(text, room - 1)) == lines_needed:  # same line count, more even lines
        room -= 1
    pieces = _pieces(text, room)
    return [(head if i == 0 else " " * len(head)) + _literal(p) + (")" if i == len(pieces) - 1 else "")
            for i, p in enumerate(pieces)]


def migrate(source: str) -> str:
    out: list[str] = []
    pending: list[str] = []
    in_dataclass = after_decorator = False
    for line in source.splitlines():
        if line.startswith("class "):
            in_dataclass = after_decorator
        after_decorator = line.startswith("@dataclass")
        m = FIELD.match(line) if in_dataclass else None
        if in_dataclass and line.startswith("    #"):
            pending.append(line.strip().lstrip("# "))
            continue
        if m and not (m.group(3) or "").startswith("opt("):
            if not pending:
                raise SystemExit(f"field {m.group(1)} has no comment above it: write opt(..., help=...) by hand")
            out.extend(_field_lines(m.group(1), m.group(2), m.group(3), " ".join(pending)))
        else:
            out.extend(f"    # {p}" for p in pending)  # a comment above an opt() field or a method stays
            out.append(line)
        pending = []
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "megatron_rlvr/config/tree.py")
    path.write_text(migrate(path.read_text()))
