"""The architecture the folders show, kept by the code: one package per role, each importing
only the packages below it; the compare stage without Keras; the training stage without the
download code; imports without side effects; every name defined once; small modules and
functions; the README's tree matching the files.

Import edges come from the source (AST, as ``test_dvc_deps`` reads them); the rules that are
about what a process loads run real subprocesses.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT
from test_dvc_deps import import_closure, imported_modules

PIPELINE = ROOT / "pipeline"
# Each package may import itself and the packages listed for it: core is the bottom; compare reads
# results without training code (so without Keras); the sweep runs trainings and writes their records.
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "measures": {"core", "measures"},
    "train": {"core", "data", "measures", "train"},
    "compare": {"core", "data", "measures", "compare"},
    "sweep": {"core", "data", "train", "sweep"},
}
# The pure-NumPy measurement modules compare may use (the others in measures need Keras).
PURE_MEASURES = {"pipeline.measures", "pipeline.measures.covariate_shift", "pipeline.measures.coadaptation",
                 "pipeline.measures.variance_shift"}
# Names several modules define on purpose: a stage's ``main``, and the interface every report
# section offers (its data, its table, its figure, its numbers for metrics.json).
SHARED_INTERFACE = {"main", "parse_args", "section", "markdown", "figure", "metrics"}
MAX_MODULE_LINES = 300
MAX_FUNCTION_LOGIC_LINES = 40


def modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in PIPELINE.rglob("*.py"))


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_lives_in_one_of_the_role_packages():
    loose = [m for m in modules() if package_of(m) is None and m != "pipeline"]
    assert not loose, f"modules outside the role packages: {loose}"
    assert {package_of(m) for m in modules() if m != "pipeline"} == set(ALLOWED)


@pytest.mark.parametrize("module", [m for m in modules() if m != "pipeline"])
def test_a_package_imports_only_the_packages_below_it(module):
    own = package_of(module)
    used = {package_of(m) for m in imported_modules(module) if package_of(m)}
    assert used <= ALLOWED[own], f"{module} ({own}) imports {sorted(used - ALLOWED[own])}, which {own} may not use"
    if own == "compare":
        measures = {m for m in imported_modules(module) if package_of(m) == "measures"}
        assert measures <= PURE_MEASURES, f"{module} imports Keras-side measures {sorted(measures - PURE_MEASURES)}"


def test_the_rule_check_sees_a_violation(tmp_path):
    """The checks above would fail on a core module importing from train."""
    pkg = tmp_path / "pipeline"
    for sub in ("core", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "bad.py").write_text("def f():\n    from pipeline.train import stage\n")
    (pkg / "train" / "stage.py").write_text("")
    used = {package_of(m) for m in imported_modules("pipeline.core.bad", root=tmp_path) if package_of(m)}
    assert not used <= ALLOWED["core"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_the_compare_package_loads_no_keras_or_tensorflow():
    compare_modules = [m for m in modules() if package_of(m) == "compare" and not m.endswith("__main__")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in compare_modules)
            + "loaded = sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules)\n"
            + "assert not loaded, loaded\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr


def test_the_training_stage_does_not_import_the_download_code():
    closure = {p.as_posix() for p in import_closure("pipeline.train.__main__")}
    assert "pipeline/data/download.py" not in closure and "pipeline/data/normalize.py" not in closure
    assert "pipeline/data/prepared.py" in closure  # it reads the data through the contract


SIDE_EFFECT_PROBE = """
import os, subprocess, sys, importlib
for name in ('keras', 'numpy', 'pandas', 'mlflow', 'scipy.stats', 'jinja2', 'yaml', 'pydantic'):
    importlib.import_module(name)   # third-party imports first: only pipeline's own effects are measured
spawned = []
real_popen = subprocess.Popen.__init__
def watch(self, *a, **k):
    spawned.append(a[0] if a else k.get('args'))
    return real_popen(self, *a, **k)
subprocess.Popen.__init__ = watch
env, finders, handlers = dict(os.environ), list(sys.meta_path), __import__('signal').getsignal(2)
for name in sys.argv[1:]:
    importlib.import_module(name)
assert not spawned, f'subprocesses started on import: {spawned}'
changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
assert not changed, f'environment changed on import: {changed}'
assert list(sys.meta_path) == finders, 'import hooks installed on import'
assert __import__('signal').getsignal(2) == handlers, 'signal handlers changed on import'
"""


def test_importing_any_module_has_no_side_effect():
    names = [m for m in modules() if not m.endswith("__main__")]
    proc = subprocess.run([sys.executable, "-c", SIDE_EFFECT_PROBE, *names], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_side_effect_probe_catches_one(tmp_path):
    (tmp_path / "noisy.py").write_text("import os\nos.environ['X_SET_ON_IMPORT'] = '1'\n")
    proc = subprocess.run([sys.executable, "-c", SIDE_EFFECT_PROBE, "noisy"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert proc.returncode != 0 and "X_SET_ON_IMPORT" in proc.stderr


def _top_level_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
    return [n for n in names if not n.startswith("_") or n.isupper()]


def test_every_name_is_defined_once():
    counts = Counter(name for path in PIPELINE.rglob("*.py") for name in _top_level_names(path))
    twice = sorted(name for name, n in counts.items() if n > 1 and name not in SHARED_INTERFACE)
    assert not twice, f"defined in more than one module: {twice}"


@pytest.mark.parametrize("pattern, home", [
    (r'-s\{', "pipeline/core/labels.py"),                       # a run label or record name
    (r'"x_train", "y_train", "x_test", "y_test"', "pipeline/data/prepared.py"),  # the prepared-data file list
    (r'#[0-9a-fA-F]{6}"', "pipeline/core/figures.py"),           # a colour
])
def test_one_home_for_labels_file_lists_and_colours(pattern, home):
    found = sorted(p.relative_to(ROOT).as_posix() for p in PIPELINE.rglob("*.py") if re.search(pattern, p.read_text()))
    assert found == [home], f"{pattern!r} written outside {home}: {found}"


def _logic_lines(node: ast.AST, lines: list[str]) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    numbers = {n for stmt in body for n in range(stmt.lineno, stmt.end_lineno + 1)}
    return sum(1 for n in numbers if lines[n - 1].strip() and not lines[n - 1].strip().startswith("#"))


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PIPELINE.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        rel = path.relative_to(ROOT).as_posix()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _logic_lines(node, lines)
                if n > MAX_FUNCTION_LOGIC_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines of logic")
    assert not too_long, too_long


def readme_tree() -> set[str]:
    """The files the README's annotated tree names under ``pipeline/``: a line is names (comma-separated)
    then two spaces and what they are; two spaces of indent per level."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("\npipeline/ ") + 1:]
    block = block[:block.index("```")]
    named, folder = set(), ""
    for line in block.splitlines()[1:]:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        if depth == 0:
            break
        entries = [e.strip() for e in line.strip().split("  ")[0].split(",")]
        if depth == 1 and entries[0].endswith("/"):
            folder = entries[0]
            continue
        named.update(f"pipeline/{folder if depth == 2 else ''}{e.rstrip('/')}" for e in entries)
    return named


def test_the_readme_tree_names_every_module_and_only_those():
    actual = {p.relative_to(ROOT).as_posix() for p in PIPELINE.rglob("*.py")}
    actual |= {"pipeline/compare/templates"}
    named = readme_tree()
    assert actual - named == set(), f"missing from the README's tree: {sorted(actual - named)}"
    assert named - actual == set(), f"in the README's tree but not in the code: {sorted(named - actual)}"
