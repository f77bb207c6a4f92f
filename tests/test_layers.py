"""The architecture as a test: nothing imports upward, and no import loops between astro_pl's modules.

Layers (README, "Architecture"): foundations (data, IO, rewards, rollout engines, tasks, text analysis) at the
bottom; components (search, datamodules, modules, evaluation runs) above them; the command layer (the `astro`
dispatcher, the pipeline, the ablation and LightningCLI) on top. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "astro_pl"
FOUNDATION_PREFIXES = ("astro_pl.data", "astro_pl.rewards", "astro_pl.rollout", "astro_pl.tasks", "astro_pl.loading",
                       "astro_pl.seeds", "astro_pl.shards", "astro_pl.runfiles", "astro_pl.options",
                       "astro_pl.errors",
                       "astro_pl.evaluation.backtracks", "astro_pl.evaluation.metrics")
COMMANDS = ("astro_pl.cli", "astro_pl.pipeline", "astro_pl.ablation", "astro_pl.training_cli")


def layer(module: str) -> int:
    def within(prefixes: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    if within(COMMANDS):
        return 2
    return 0 if module == "astro_pl" or within(FOUNDATION_PREFIXES) else 1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each astro_pl module and the astro_pl modules it imports (a `from pkg import name` that names a submodule
    counts as that submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("astro_pl")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("astro_pl"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_nothing_imports_upward():
    upward = [f"{src} -> {dst}" for src, dsts in imports().items() for dst in dsts if layer(dst) > layer(src)]
    assert not upward, upward


def test_no_import_loops():
    graph = imports()
    state: dict[str, int] = {}
    loops: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # package __init__ files re-export their modules; a module importing its own package's name is not a loop
    loops = [loop for loop in loops if not any(a.startswith(b + ".") or b.startswith(a + ".")
                                               for a, b in zip(loop, loop[1:], strict=False))]
    assert not loops, loops


def test_no_file_over_500_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long
