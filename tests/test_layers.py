"""The import rules of the layers, read from the source with ``ast`` (nothing is imported).

    entry    train.py, lit_sr.config.*, lit_sr.{infer,evaluate,extract_masks,...} (CLIs)
    systems  lit_sr.systems.* (LightningModules), callbacks.*
    model    lit_sr.model.*, lit_sr.metrics.*, lit_sr.tagging.*, losses.*  (plain nn.Modules; no Lightning)
    data     datamodules.*
    base     lit_sr.errors, lit_sr.typed, lit_sr.photos, lit_sr.lightning_access (error types, typed-config
             helpers, the cache folder and bundled-photo list, the Lightning internals every layer may read)

Two more rules inside the downward arrows: the model layer never imports the data layer (a cache
location or a photo list belongs in a base module), and metrics never import losses (a network
both use lives in the model layer).

Arrows point down only, and no module imports itself back through others (no cycles), lazy
imports inside functions included: a cycle hidden in a function is still a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lit_sr", "losses", "callbacks", "datamodules")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = {"train": ROOT / "train.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            files[_module_name(path)] = path
    return files


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module (project or third-party) that ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            for alias in node.names:  # `from pkg import submodule`
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = _sources()
    known = set(files)
    everything = {name: _imports(name, path, known) for name, path in files.items()}
    project = {name: {m for m in mods if m in known and m != name} for name, mods in everything.items()}
    return everything, project


def _layer(module: str) -> str:
    if module in ("lit_sr", "lit_sr.errors", "lit_sr.typed", "lit_sr.photos", "lit_sr.lightning_access"):  # helpers of every layer
        return "base"
    if module.startswith(("lit_sr.model", "lit_sr.metrics", "lit_sr.tagging", "losses")):
        return "model"
    if module.startswith("datamodules"):
        return "data"
    if module.startswith(("lit_sr.systems", "callbacks")):
        return "systems"
    return "entry"


RANK = {"base": -1, "data": 0, "model": 1, "systems": 2, "entry": 3}


def test_arrows_point_down_only():
    _, project = _graph()
    upward = sorted(f"{a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, deps in project.items() for b in deps
                    if RANK[_layer(b)] > RANK[_layer(a)])
    assert not upward, "\n".join(upward)


def test_model_never_imports_data_and_metrics_never_import_losses():
    _, project = _graph()
    bad = sorted(f"{a} imports {b}" for a, deps in project.items() for b in deps
                 if (_layer(a) == "model" and _layer(b) == "data")
                 or (a.startswith("lit_sr.metrics") and b.startswith("losses")))
    assert not bad, "\n".join(bad)


def test_model_side_uses_no_lightning_system_or_callback():
    everything, _ = _graph()
    bad = sorted(f"{name} imports {mod}" for name, mods in everything.items() if _layer(name) == "model"
                 for mod in mods if mod.split(".")[0] in ("lightning", "pytorch_lightning"))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    _, project = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(project.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(project):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_rules_see_real_imports():
    """Guards the reader itself: a known import is found (else every rule above passes vacuously)."""
    _, project = _graph()
    assert "lit_sr.model.generator" in project["lit_sr.systems.sr"]
    assert "lit_sr.model.noise.base" in project["lit_sr.model.noise.rgpa"]
