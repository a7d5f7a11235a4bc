"""The core's house rules (docs/architecture.md, "The core by stage"), read from the source with `ast`.

Every module of cxrcore sits on a floor: the shared ground (errors, fileio, export, lazy), then the
stages data -> audit / evaluate -> train -> explain, then demo, the CLI commands and the CLI. A module
imports only from lower floors or from its own stage package; no import reaches up, nothing imports
Streamlit, and the module-level imports (the ones Python runs at import time) form no circle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "cxrcore"

#: The floor of every module or package of cxrcore (the longest matching prefix wins).
FLOORS: dict[str, float] = {
    "cxrcore.errors": 0, "cxrcore.lazy": 0, "cxrcore.export": 0, "cxrcore.fileio": 0.5,
    "cxrcore.data": 1, "cxrcore": 1.5,  # the package itself: errors and the labels, nothing heavy
    "cxrcore.audit": 2, "cxrcore.evaluate": 2,
    "cxrcore.train": 3,
    "cxrcore.explain": 4,
    "cxrcore.demo": 5,
    "cxrcore.commands": 6, "cxrcore.cli": 7, "cxrcore.__main__": 8,
}
STAGES = ("data", "audit", "evaluate", "train", "explain")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> float:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} has no floor: add it to FLOORS here and to docs/architecture.md"
    return FLOORS[max(prefixes, key=len)]


def stage_of(module: str) -> str:
    """'cxrcore.train' for cxrcore.train.loop; the module itself outside the stage packages."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and (CORE / parts[1]).is_dir()) else module


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, name: str) -> str:
    """`from module import name`: the submodule when `name` is one, else the module."""
    full = f"{module}.{name}"
    as_path = ROOT / full.replace(".", "/")
    return full if as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file() else module


def imports(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(cxrcore modules imported anywhere, those imported at module level, every top-level library), skipping
    `if TYPE_CHECKING:` blocks (annotations only, never run)."""
    anywhere: set[str] = set()
    top: set[str] = set()
    libraries: set[str] = set()

    def add(name: str, at_top: bool) -> None:
        libraries.add(name.split(".")[0])
        if name.startswith("cxrcore"):
            anywhere.add(name)
            if at_top:
                top.add(name)

    def visit(nodes: list[ast.stmt], at_top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse, at_top)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, at_top)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    add(_resolve(node.module, alias.name), at_top)
            else:
                nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        visit([c for c in children if isinstance(c, ast.stmt)] +
                              [s for h in children if isinstance(h, ast.ExceptHandler) for s in h.body],
                              at_top and not nested)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, True)
    return anywhere, top, libraries


MODULES = {module_name(p): p for p in sorted(CORE.rglob("*.py"))}
IMPORTS = {m: imports(p) for m, p in MODULES.items()}


def test_every_module_has_a_floor_and_every_stage_a_package():
    for module in MODULES:
        floor(module)
    for stage in STAGES:
        init = CORE / stage / "__init__.py"
        assert init.is_file(), f"cxrcore/{stage}/ is not a package"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and doc.lower().startswith(stage), f"cxrcore/{stage}/__init__.py should say what the stage does"
    assert not [p.name for p in CORE.glob("*.py") if module_name(p) not in FLOORS and p.stem != "__init__"], \
        "a new top-level module: put it in its stage package (data, audit, evaluate, train, explain)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward(module):
    """A module imports from a lower floor, or from its own stage package; never up or sideways."""
    here, own_stage = floor(module), stage_of(module)
    wrong = sorted(f"{target} (floor {floor(target)})" for target in IMPORTS[module][0]
                   if target != module and stage_of(target) != own_stage and floor(target) >= here
                   and target != "cxrcore")
    if module != "cxrcore" and "cxrcore" in IMPORTS[module][0]:
        assert here > FLOORS["cxrcore"], f"{module} imports the cxrcore package from below it"
    assert not wrong, f"{module} (floor {here}) imports upward or sideways: {wrong}"


def test_the_core_never_imports_streamlit():
    users = sorted(m for m, (_, _, libraries) in IMPORTS.items() if "streamlit" in libraries)
    assert not users, f"the core must stay UI-free; these import Streamlit: {users}"


def test_module_level_imports_form_no_circle():
    graph = {m: {t for t in top if t in MODULES and t != m} for m, (_, top, _) in IMPORTS.items()}
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for target in sorted(graph[node]):
            walk(target, path + [node])
        done.add(node)

    for module in sorted(graph):
        walk(module, [])


def test_the_explain_circle_stays_open():
    """cam and saliency share their names through explain.methods; saliency never reaches back into cam."""
    assert "cxrcore.explain.cam" not in IMPORTS["cxrcore.explain.saliency"][0]
    assert "cxrcore.explain.methods" in IMPORTS["cxrcore.explain.saliency"][1]


def test_stage_packages_import_nothing_heavy_and_export_what_they_name():
    """`import cxrcore.train` costs nothing: its names (build_model, ...) load their module on first use."""
    code = (
        "import sys\n"
        "import cxrcore, cxrcore.data, cxrcore.audit, cxrcore.evaluate, cxrcore.train, cxrcore.explain\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch', 'pandas', 'cv2', 'scipy', 'streamlit')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
        "from cxrcore.audit import run_audit\n"
        "from cxrcore.data import LABELS, load_split\n"
        "from cxrcore.audit import audit\n"  # the submodule, not an export
        "assert run_audit is audit.run_audit and len(LABELS) == 14 and callable(load_split)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"importing the stage packages loaded {done.stdout.strip()}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_exported_name_resolves(stage):
    import importlib

    package = importlib.import_module(f"cxrcore.{stage}")
    assert package.__all__, f"cxrcore.{stage} exports nothing"
    for name in package.__all__:
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        getattr(package, "no_such_name")
