"""The three boundaries that keep the code easy to change (GUIDE.md), checked on the source."""

from __future__ import annotations

import re
from pathlib import Path

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
