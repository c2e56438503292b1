"""The installed package: the contract (topics/) ships inside it as ``connector.contract``, and
nothing else is installed at the top level (no ``topics`` module another distribution may own)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_lists_every_subpackage() -> None:
    # pyproject.toml lists packages explicitly (the contract is mapped from topics/): a new
    # subpackage of connector/ that is not listed would be missing from the wheel.
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "connector").rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"connector.contract"}
    assert tool["package-dir"] == {"connector.contract": "topics"}


def _imported_distributions(files: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party module ``files`` import (lazily or not) -> the distributions that provide it."""
    import ast
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    names: set[str] = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    names -= set(sys.stdlib_module_names) | {"connector", "__future__"}
    return {n: {_canonical(d) for d in dists.get(n, [n])} for n in names}


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install (installed ones, markers for this interpreter)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _canonical(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in requires(name) or ()]
        except PackageNotFoundError:
            pass
    return seen


def test_runtime_dependencies_are_exactly_what_the_worker_and_operator_commands_import() -> None:
    # connector/ minus devtools/ is what the image runs (worker + operator commands); the tooling's
    # own libraries belong to an extra, so the image does not carry them.
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = [p for p in (ROOT / "connector").rglob("*.py") if "devtools" not in p.relative_to(ROOT).parts]
    tooling = list((ROOT / "connector" / "devtools").rglob("*.py"))
    declared = {_canonical(Requirement(r).name) for r in project["dependencies"]}
    imported = _imported_distributions(runtime)
    installed = _closure(project["dependencies"])
    assert {m for m, d in imported.items() if not d & installed} == set(), "imported, not a runtime dependency"
    # data read through the standard library, never imported: tzdata is zoneinfo's database where
    # the OS has none (quiet hours), so it stays only while the runtime uses zoneinfo
    data_only = {"tzdata"}
    assert any("zoneinfo" in p.read_text() for p in runtime)
    assert {d for d in declared - data_only if not any(d in ds for ds in imported.values())} == set(), \
        "a runtime dependency nothing outside devtools/ imports"
    with_extras = _closure(project["dependencies"] + extras["dev"] + extras["bench"])
    assert {m for m, d in _imported_distributions(tooling).items() if not d & with_extras} == set()
    bench = {_canonical(Requirement(r).name) for r in extras["bench"]}
    assert {"faust-streaming", "httpx"} <= bench and not bench & declared
    assert "sms-connector[bench]" in extras["dev"]


def test_wheel_carries_the_contract_and_works_outside_the_checkout(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ behind, which must not pollute the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                ".bench", ".hypothesis"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(wheels)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("sms_connector-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        top_level = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    assert top_level == ["connector"]
    assert not any(n.startswith("topics/") for n in names)
    schemas = {p.name for p in (ROOT / "topics" / "schemas").glob("*.json")}
    assert {"connector/contract/__init__.py", "connector/contract/topics.toml"} <= names
    assert {f"connector/contract/schemas/{s}" for s in schemas} <= names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import importlib.util, connector.contract as c\n"
             "print(c.__file__)\n"
             "print(len(c.specs()), c.spec('outbound').name, c.schema('outbound_sms.json')['type'])\n"
             "print(importlib.util.find_spec('topics'))\n")
    # -I: ignore PYTHONPATH and the user site; the checkout is not on the path, the target dir is.
    # The venv's site-packages stay (orjson) but the editable install's finder is bypassed by
    # putting the target directory first.
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + probe],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    where, counts, missing_topics = out.stdout.splitlines()
    assert where.startswith(str(site))
    assert counts.split()[1:] == ["sms.outbound", "object"]
    assert missing_topics == "None"


def test_nothing_imports_the_contract_as_a_top_level_module() -> None:
    # In a checkout `import topics` still resolves (the folder is on the path), but an installed
    # wheel has no such module: only `from connector import contract` works everywhere.
    import re

    offenders = [str(p.relative_to(ROOT)) for folder in ("connector", "tests", "benchmarks", "scripts")
                 for p in (ROOT / folder).rglob("*.py")
                 if re.search(r"^\s*(import topics\b|from topics\b)", p.read_text(), re.M)]
    assert offenders == []


def test_imports_go_one_way_worker_then_ops_then_devtools() -> None:
    # The worker's modules import neither the operator commands nor the tooling; the operator
    # commands do not import the tooling. Only cli.py, the entry point of all three, sees them all.
    import ast

    def imports(path: Path) -> set[str]:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        return found

    wrong = []
    for path in (ROOT / "connector").rglob("*.py"):
        rel = path.relative_to(ROOT / "connector").parts
        if rel[0] in ("devtools", "cli.py"):
            continue
        banned = ("connector.devtools",) if rel[0] == "ops" else ("connector.devtools", "connector.ops")
        wrong += [(str(path.relative_to(ROOT)), name) for name in imports(path) if name.startswith(banned)]
    assert wrong == []
