"""``benchmarks/produce_path.py`` still runs against a real broker (the harness, not speed)."""

from __future__ import annotations

import pytest

from benchmarks import produce_path
from connector.devtools.stack import LocalStack

pytestmark = pytest.mark.integration


async def test_produce_path_reports_cpu_batches_and_waits(broker: LocalStack) -> None:
    row = await produce_path.one_run(broker.kafka, messages=300, in_flight=32, linger_ms=2.0, call_ms=0.5)
    assert row["cpu_ms_per_1k"] > 0 and row["messages_per_s"] > 0
    assert 0 < row["batches_per_message"] <= 3 and row["drain_waits_per_message"] == 0
    assert row["produce_p99_ms"] >= row["produce_p50_ms"] > 0
