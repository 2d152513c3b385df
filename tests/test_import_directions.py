"""The package layout follows the data flow, and its imports only run downwards (docs/ARCHITECTURE.md).

Every module of `megatron_rlvr` belongs to one unit (a package, or a top-level module); units are stacked in
LAYERS, lowest first. A module may import its own unit and any lower one, never a higher one, and no set of
modules may import each other in a circle. The imports are read from the source (ast), including the ones inside
functions; imports under `if TYPE_CHECKING:` are left out: they only name types for annotations (the stages
annotate with their config section, and the config tree sits above the stages) and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_rlvr"

# Lowest first. Within the stages, the flow order: a later stage reads the earlier stages' data types.
LAYERS: list[tuple[str, ...]] = [
    ("", "errors", "registry"),  # leaves: the package root (its version only); user-facing errors: user-facing errors; the torch-free name -> factory tables
    ("kernels",),  # the fused DLC sampler (its own top-level folder, symlinked into the package)
    ("qwen3",),  # the model family: shapes, HF config, name map, Megatron provider, live weight stream
    ("distributed",),  # process groups and parallel layouts, CPU shims
    ("tasks",),  # prompts, tokenizer, verifiers
    ("rollout",),  # engines, layout, one round of generation
    ("reward",),  # scored batch: verifier rewards, DAPO shaping and dynamic sampling
    ("advantage",),  # estimators, IAC
    ("update",),  # losses, log-probs, micro-batches, the policy and memory updates, TrainableModel
    ("weight_sync",),  # new weights into the engines
    ("checkpoint",),  # atomic dist-checkpoints
    ("config",),  # the typed config tree: reads the stages' registries and the Qwen3 shapes to validate
    ("eval",),  # held-out evaluation of the policy alone, rollout statistics
    ("convert",),  # Hugging Face <-> Megatron checkpoints (uses the trainer's model and the checkpoint store)
    ("run", "recipes"),  # set-up, guards, warm start, invariants, metrics sinks; recipe configs
    ("step",),  # one RL step: rollouts -> advantages -> updates -> weight push (the loop's and the benchmarks')
    ("launch", "bench", "rollout.server"),  # programs: nemo-run launcher, benchmarks, the rollout server
    ("train",),  # the loop
    ("cli",),  # the `megatron-rlvr` command
]

# Modules that are programs rather than library code sit in a higher unit than their folder (longest prefix wins).
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The LAYERS unit of a dotted `megatron_rlvr...` module name (longest listed prefix)."""
    rest = module.removeprefix("megatron_rlvr").lstrip(".")
    parts = rest.split(".") if rest else []
    for n in range(len(parts), -1, -1):
        candidate = ".".join(parts[:n])
        if candidate in RANK and (n or not parts):  # the root "" is a unit for the root module alone
            return candidate
    raise AssertionError(f"module {module} is in no unit of LAYERS; add its package to the table")


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def imports_of(path: Path, module: str) -> set[str]:
    """The `megatron_rlvr` modules `path` imports at run time (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if _type_checking_block(node):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("megatron_rlvr"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("megatron_rlvr"):
                continue
            # `from megatron_rlvr.x import y` may import the submodule y: count it where it is one
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if _is_module(sub) else base)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "kernels" in path.relative_to(PACKAGE).parts:  # the kernels folder is its own unit, checked as one
            continue
        name = module_name(path)
        graph[name] = imports_of(path, name)
    return graph


def test_every_module_imports_only_its_own_or_lower_layers():
    upward = []
    for module, deps in import_graph().items():
        here = RANK[unit_of(module)]
        for dep in sorted(deps):
            if RANK[unit_of(dep)] > here:
                upward.append(f"{module} ({unit_of(module)}) -> {dep} ({unit_of(dep)})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_every_package_and_top_level_module_has_a_place_in_the_layers():
    graph = import_graph()
    for module in graph:
        unit_of(module)  # raises, naming the module, when the table lacks it
    listed = {u.split(".")[0] for units in LAYERS for u in units if u}
    on_disk = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert on_disk <= listed, f"not in LAYERS: {sorted(on_disk - listed)}"


def test_the_checker_sees_an_upward_import(tmp_path):
    # the checker itself: a lower unit importing a higher one is reported (guards against a checker that reads nothing)
    src = tmp_path / "x.py"
    src.write_text("from megatron_rlvr.train import main\n"
                   "from typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from megatron_rlvr.cli import main as cli_main\n")
    deps = imports_of(src, "megatron_rlvr.rollout.x")
    assert deps == {"megatron_rlvr.train"}
    assert RANK[unit_of("megatron_rlvr.train")] > RANK[unit_of("megatron_rlvr.rollout.x")]
