"""The layout promises of docs/architecture.md, read from the source with ast (no imports).

- the top of core/pixdex/ holds only the foundation; every other module sits in its job folder;
- recognition/ and retrieval/ never import each other; data/ and pipeline/ import neither;
- no import circle among pixdex's modules and the built-in plugins, counting imports made
  inside functions and under TYPE_CHECKING;
- built-in plugins import the core only through pixdex.plugin_api and pixdex.hookspecs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
PLUGINS = ROOT / "plugins"
FOUNDATION = {
    "__init__",
    "__main__",
    "api",
    "artifacts",
    "cache_dir",
    "components",
    "config",
    "contracts",
    "device",
    "errors",
    "hookspecs",
    "optional",
    "plugin_api",
    "plugins",
    "recall",
    "registry_file",
    "settings",
    "vectors",
    "world",
}
JOB_FOLDERS = {"cli", "data", "export", "pipeline", "recognition", "retrieval", "sample", "serve"}


def _modules() -> dict[str, Path]:
    found = {}
    for base in (CORE, PLUGINS):
        for path in base.rglob("*.py"):
            if "sample" in path.relative_to(base).parts[1:2]:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module of ours that ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_top_of_the_core_holds_only_the_foundation():
    top = {p.stem for p in (CORE / "pixdex").glob("*.py")}
    assert top == FOUNDATION
    folders = {p.name for p in (CORE / "pixdex").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == JOB_FOLDERS


def test_job_folders_depend_downwards_only():
    forbidden = {
        "pixdex.serve": ("pixdex.recognition", "pixdex.cli"),
        "pixdex.export": ("pixdex.recognition", "pixdex.cli", "pixdex.serve"),
        "pixdex.recognition": ("pixdex.retrieval", "pixdex.cli", "pixdex.serve"),
        "pixdex.retrieval": ("pixdex.recognition", "pixdex.cli", "pixdex.serve"),
        "pixdex.pipeline": ("pixdex.recognition", "pixdex.retrieval", "pixdex.cli"),
        "pixdex.data": ("pixdex.pipeline", "pixdex.recognition", "pixdex.retrieval", "pixdex.cli"),
    }
    bad = [
        f"{name} -> {dep}"
        for name, deps in GRAPH.items()
        for folder, banned in forbidden.items()
        if name.startswith(folder + ".")
        for dep in deps
        if dep.startswith(banned)
    ]
    foundation = {f"pixdex.{m}" for m in FOUNDATION} | {"pixdex"}
    bad += [
        f"{name} -> {dep}"
        for name in foundation & set(GRAPH)
        for dep in GRAPH[name]
        if dep.startswith(tuple(f"pixdex.{f}" for f in JOB_FOLDERS))
        and name not in ("pixdex.plugin_api", "pixdex.__main__")
    ]
    assert bad == []


def test_no_import_circles():
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert cycles == []


def test_the_graph_sees_function_level_and_type_checking_imports():
    # the scanner itself: these edges exist only inside functions or under TYPE_CHECKING
    assert "pixdex_timm.model" in GRAPH["pixdex_timm"]
    assert "pixdex.components" in GRAPH["pixdex.hookspecs"]


@pytest.mark.parametrize("plugin", sorted(p.name for p in PLUGINS.iterdir() if p.name.startswith("pixdex_")))
def test_plugins_use_only_the_plugin_api(plugin: str):
    allowed = {"pixdex.plugin_api", "pixdex.hookspecs"}
    bad = [
        f"{name} -> {dep}"
        for name, deps in GRAPH.items()
        if name.split(".")[0] == plugin
        for dep in deps
        if dep.startswith("pixdex.") or dep == "pixdex"
        if dep not in allowed
    ]
    assert bad == []


def test_plugin_api_is_cheap_and_complete():
    code = (
        "import sys, pixdex.plugin_api as api\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'timm', 'annoy') if m in sys.modules)\n"
        "assert heavy == [], heavy\n"
        "missing = [n for n in api.__all__ if getattr(api, n, None) is None]\n"
        "assert missing == [], missing\n"
        "assert 'torch' in sys.modules\n"
    )  # check_weights_fit lives with the torch pipeline
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
