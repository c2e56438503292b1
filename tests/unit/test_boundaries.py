"""The three boundaries that keep the code easy to change (GUIDE.md), checked on the source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "connector"


def sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in ROOT.rglob("*.py")}


def test_only_config_reads_the_environment() -> None:
    # dev tooling passes the environment on to child processes and may locate the dev broker.
    allowed = {"config/kit.py", "config/loading.py", "devtools/stack.py", "devtools/embedded_broker.py", "devtools/kafka_broker/__init__.py"}
    offenders = [f for f, src in sources().items()
                 if f not in allowed and re.search(r"os\.environ|os\.getenv|getenv\(", src)]
    assert offenders == []


def test_only_streams_and_app_know_kafka_consumers() -> None:
    # plus operator tools on topics: the benchmark (with its faust baseline), dlq replay, check
    allowed_prefixes = ("streams/", "app.py", "kafka.py", "devtools/kafka_broker/", "devtools/stack.py", "ops/tools.py",
                        "devtools/dev.py", "devtools/bench.py", "devtools/baseline.py", "ops/replay.py", "ops/check.py",
                        "ops/kafka_probe.py")
    offenders = [f for f, src in sources().items()
                 if not f.startswith(allowed_prefixes) and re.search(r"^\s*(from|import) (aiokafka|faust)", src, re.M)]
    assert offenders == []


def test_providers_do_no_io() -> None:
    offenders = [f for f, src in sources().items()
                 if f.startswith("providers/") and re.search(r"^\s*(from|import) (aiohttp|asyncio|socket|httpx)", src, re.M)]
    assert offenders == []


# -- providers own their wire formats ------------------------------------------------------------
# Development tooling (connector/devtools: simulators, bench, local stack, dev) imitates or drives
# providers by name; everything else in connector/ selects providers by capability.
TOOLING = ("devtools/",)
PROVIDER_NAMES = "|".join(sorted(p.name for p in __import__("connector.providers", fromlist=["REGISTRY"])
                                 .REGISTRY.values()))
NAME_SWITCH = re.compile(
    rf"""provider(\(\))?\.name\s*[!=]=|\.provider\s*[!=]=|[!=]=\s*["']({PROVIDER_NAMES})["']|["']({PROVIDER_NAMES})["']\s*[!=]=|"""
    rf"""\bin\s*[(\[{{]?\s*["']({PROVIDER_NAMES})["']|["']({PROVIDER_NAMES})["']\s*:|"""
    rf"""provider\s*=\s*["']({PROVIDER_NAMES})["']""")
XML_PARSER = re.compile(r"^\s*(from|import)\s+(xml\.etree|xml\.dom|xml\.sax|xml\.parsers|defusedxml|lxml)\b", re.M)


def _worker_sources() -> dict[str, str]:
    return {f: src for f, src in sources().items() if not f.startswith(("providers/",) + TOOLING)}


def test_no_xml_parser_outside_providers() -> None:
    offenders = [f for f, src in _worker_sources().items() if XML_PARSER.search(src)]
    assert offenders == []


def test_no_provider_name_switch_outside_providers() -> None:
    offenders = [(f, m.group(0)) for f, src in _worker_sources().items() for m in NAME_SWITCH.finditer(src)]
    assert offenders == []


def test_the_boundary_checks_see_what_they_look_for() -> None:
    assert NAME_SWITCH.search('if provider.name == "ogangi":')
    assert NAME_SWITCH.search('{"revio": 1}')
    assert NAME_SWITCH.search('kind="x", provider="thingspace",')
    assert XML_PARSER.search("from xml.etree.ElementTree import ParseError")
    assert XML_PARSER.search("from defusedxml import DefusedXmlException")


# -- no import cycle ------------------------------------------------------------------------------

def _imports(src: str, module: str, *, lazy: bool) -> set[str]:
    """The connector modules ``module`` imports: at module level, or (``lazy``) anywhere."""
    import ast

    tree = ast.parse(src)
    nodes = ast.walk(tree) if lazy else iter(tree.body)
    found: set[str] = set()
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    for node in nodes:
        if isinstance(node, ast.If) and not lazy:     # `if TYPE_CHECKING:` imports do not run
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("connector")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("connector"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph(*, lazy: bool) -> dict[str, set[str]]:
    modules = {}
    for f, src in sources().items():
        name = "connector." + f.removesuffix(".py").replace("/", ".")
        modules[name.removesuffix(".__init__")] = src
    graph = {}
    for name, src in modules.items():
        is_pkg = f"{name}.__init__" if any(k.startswith(name + ".") for k in modules) else name
        graph[name] = {m for m in _imports(src, is_pkg, lazy=lazy) if m in modules and m != name}
    return graph


# Built when the module is collected, before any test runs: CPython 3.11.7's ast.parse can raise
# "SystemError: AST constructor recursion depth mismatch" after an earlier deep recursion in the
# same process (seen once in a full run), which says nothing about our imports.
_GRAPHS = {lazy: _graph(lazy=lazy) for lazy in (False, True)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_at_module_level() -> None:
    assert _cycles(_GRAPHS[False]) == []


def test_providers_and_config_do_not_import_each_other() -> None:
    # counting lazy imports too: a cycle hidden inside a function is still a cycle
    graph = _GRAPHS[True]
    providers = {m for m in graph if m.startswith("connector.providers")}
    config = {m for m in graph if m == "connector.config" or m.startswith("connector.config.")}

    def reaches(src: set[str], dst: set[str]) -> bool:
        seen, todo = set(), list(src)
        while todo:
            m = todo.pop()
            for n in graph.get(m, ()):
                if n in dst:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    assert not (reaches(providers, config) and reaches(config, providers))


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
