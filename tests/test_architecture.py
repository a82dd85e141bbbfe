"""The layout of orchestrator/ as docs/ARCHITECTURE.md draws it: every module on the map, no
import cycles, and imports only downwards through the layers (read from the source with `ast`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"
# docs/ARCHITECTURE.md's layers, highest first: a module may import from its own layer and below.
LAYERS = [
    {"__main__", "cli", "app", "drain", "client", "workers"},
    {"http", "livetalking"},
    {"services", "metrics"},
    {"outputs"},
    {"session", "voice_input"},
    {"speech", "chat"},
    {"tts", "asr", "vad", "lipsync", "avatar"},
    {"triton", "media"},
    {"settings", "errors", "language", "rate_limited_log"},
]
RANK = {name: len(LAYERS) - i for i, layer in enumerate(LAYERS) for name in layer}
TOP_LEVEL_AT_MOST = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules `name` imports (a package's __init__ when it imports the package)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else "__init__"
    return RANK.get(top, 0)


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_module_is_on_the_map():
    text = ARCHITECTURE.read_text()
    missing = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__init__.py" and f"`{p.relative_to(PACKAGE)}`" not in text]
    assert not missing, f"docs/ARCHITECTURE.md's map does not name: {missing}"
    top = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= TOP_LEVEL_AT_MOST, top
    assert all(p.stem in RANK for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert all(d.name in RANK for d in PACKAGE.iterdir() if (d / "__init__.py").exists())


def test_imports_go_down_the_layers_and_never_in_a_cycle():
    edges = graph()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if layer(b) > layer(a))
    assert not upward, upward
    # Depth-first search for a cycle: any module reached again while still on the path.
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                return [*path, name, target]
            if target not in state and (cycle := visit(target, [*path, name])):
                return cycle
        state[name] = 2
        return None

    for name in sorted(edges):
        if name not in state:
            cycle = visit(name, [])
            assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])
