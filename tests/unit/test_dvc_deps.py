"""dvc.yaml's code dependencies, checked against the code: every stage that runs
``python -m pipeline.<module>`` must list the ``pipeline`` packages and files that module imports,
directly or through other pipeline modules (imports inside functions included): every source
file it imports lies inside a listed package folder or is listed itself, and every listed
folder or file is one it imports from. So editing any code it runs reruns the stage, and a
package it never imports is never listed.

Computed from the source (AST, nothing imported), so it keeps holding when modules are
added, split or renamed. Data, params and result deps are not checked here.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PACKAGE = "pipeline"


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a dotted module name under ``root``, or None if it is not one."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement and ``importlib.import_module("...")`` call, in functions too;
    ``if TYPE_CHECKING:`` bodies are skipped (they never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(module: str, root: Path = ROOT, package: str = PACKAGE) -> set[str]:
    """Dotted names of the ``package`` modules that ``module`` imports directly."""
    path = module_file(module, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    current_pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            names.add(node.args[0].value)
        else:
            if node.level:
                base_parts = current_pkg.split(".")[: len(current_pkg.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            # `from pkg import name` imports the submodule pkg.name when there is one.
            names.update(f"{base}.{alias.name}" for alias in node.names
                         if module_file(f"{base}.{alias.name}", root) is not None)
    found = set()
    for name in names:
        if name != package and not name.startswith(package + "."):
            continue
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py too.
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                     if module_file(".".join(parts[:i]), root) is not None)
    return found


def import_closure(module: str, root: Path = ROOT, package: str = PACKAGE) -> set[Path]:
    """Source files (relative to ``root``) of ``module``, its packages and every ``package``
    module it imports, transitively."""
    parts = module.split(".")
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(name, root, package) - seen)
    return {module_file(name, root).relative_to(root) for name in seen}


def pipeline_modules(cmd) -> list[str]:
    """The ``pipeline`` modules a stage's ``cmd`` (a string or a list of them) runs with ``-m``
    (for a package, its ``__main__``)."""
    mods = []
    for line in [cmd] if isinstance(cmd, str) else cmd:
        argv = shlex.split(line)
        mods += [argv[i + 1] for i, arg in enumerate(argv[:-1])
                 if arg == "-m" and argv[i + 1].split(".")[0] == PACKAGE]
    return [f"{m}.__main__" if (ROOT.joinpath(*m.split(".")) / "__main__.py").is_file() else m for m in mods]


def stage_definitions(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """Stage name -> the dict holding its cmd and deps (``foreach`` stages: the ``do`` part)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def code_deps(stage: dict) -> set[Path]:
    """The stage's deps inside ``pipeline/``: source files and package folders."""
    wdir = Path(stage.get("wdir", "."))
    deps = set()
    for dep in stage.get("deps", []):
        path = Path((ROOT / wdir / (dep if isinstance(dep, str) else next(iter(dep)))).resolve().relative_to(ROOT.resolve()))
        if path.parts[0] == PACKAGE:
            deps.add(path)
    return deps


def covered(source: Path, deps: set[Path]) -> bool:
    return source in deps or any(dep in source.parents for dep in deps)


STAGES = {name: stage for name, stage in stage_definitions().items() if pipeline_modules(stage.get("cmd", ""))}


def test_stages_running_pipeline_modules_are_found():
    assert {"download", "normalize", "train", "lr_grid", "compare"} <= set(STAGES)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_exactly_the_code_it_imports(name):
    stage = STAGES[name]
    needed = set().union(*(import_closure(mod) for mod in pipeline_modules(stage["cmd"])))
    listed = code_deps(stage)
    missing = sorted(str(source) for source in needed if not covered(source, listed))
    extra = sorted(str(dep) for dep in listed if not any(covered(source, {dep}) for source in needed))
    assert not missing and not extra, (
        f"dvc.yaml stage '{name}': deps out of date with the code it imports. "
        + (f"Missing (imported, so add them or their package folder to dvc.yaml): {missing}. " if missing else "")
        + (f"Extra (not imported, so remove them from dvc.yaml): {extra}." if extra else ""))


def test_import_closure_follows_every_import_form(tmp_path):
    """The walker itself, on a small package: top-level, in-function, ``from pkg import mod``,
    ``from pkg.mod import name``, relative, ``import_module`` and TYPE_CHECKING imports."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "import os\n",
        "entry.py": ("from pipeline import a\nfrom typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from pipeline import typing_only\n"
                     "def f():\n    from pipeline.b import thing\n    import pipeline.sub.c\n"),
        "a.py": "from . import d\n",
        "b.py": "thing = 1\nfrom .sub import e\n",
        "d.py": "import importlib\nmod = importlib.import_module('pipeline.f')\n",
        "f.py": "from pipeline import NAME_IN_INIT\n",
        "typing_only.py": "", "unused.py": "",
        "sub/__init__.py": "", "sub/c.py": "", "sub/e.py": "from ..a import x\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    closure = {p.as_posix() for p in import_closure("pipeline.entry", root=tmp_path)}
    assert closure == {f"pipeline/{rel}" for rel in files} - {"pipeline/typing_only.py", "pipeline/unused.py"}
