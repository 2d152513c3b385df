"""README's "Where each part lives" table, docs/ARCHITECTURE.md and the package tree agree, and the docs are
self-contained (no citation of files outside the repository)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "megatron_rlvr"


def units() -> set[str]:
    """Every package and top-level module of megatron_rlvr, as it is written in the docs (`name/` or `name.py`)."""
    out = set()
    for p in PACKAGE.iterdir():
        if p.is_dir() and (p / "__init__.py").is_file():
            out.add(f"{p.name}/")
        elif p.suffix == ".py" and p.stem != "__init__":
            out.add(p.name)
    return out


def readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Where each part lives")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_path_in_the_readme_table_exists():
    missing = []
    for cell in re.findall(r"`([^`]+)`", readme_table()):
        for path in re.findall(r"[\w./-]+\.py|[\w./-]+/", cell):
            candidates = [ROOT / path, PACKAGE / path, PACKAGE / "update" / path, PACKAGE / "rollout" / path]
            if not any(c.exists() for c in candidates):
                missing.append(path)
    assert not missing, f"README table names paths that do not exist: {missing}"


def test_every_package_has_a_row_in_the_readme_and_a_paragraph_in_architecture():
    table = readme_table()
    arch = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for unit in sorted(units() - {"kernels/"}):  # the kernels live in the top-level kernels/ folder
        assert f"megatron_rlvr/{unit}" in table, f"README's table has no row for megatron_rlvr/{unit}"
        assert f"`{unit}`" in arch or f"`{unit.rstrip('/')}" in arch, f"docs/ARCHITECTURE.md says nothing of {unit}"


def test_code_and_docs_cite_no_file_outside_the_repository():
    offenders = []
    for path in [*ROOT.glob("megatron_rlvr/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md",
                 *ROOT.glob("examples/**/*.py"), *ROOT.glob("tests/**/*.py")]:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        if re.search(r"SPEC(\.md| \d)|/work/shared|/work/main", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"cite docs/ALGORITHMS.md sections instead of SPEC / machine paths: {offenders}"
