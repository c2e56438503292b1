"""Integration fixtures: a real Kafka-protocol broker, simulators and workers as processes."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from connector.devtools.stack import LocalStack


@pytest.fixture
async def stack(broker: LocalStack) -> AsyncIterator[LocalStack]:
    await broker.start_simulator("smpp_rest")
    try:
        yield broker
    finally:
        await broker.stop()
        for w in broker.workers:   # show what the workers said when a test fails
            if w.log and w.log.exists():
                tail = w.log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {w.name} log tail ({w.log})", *tail, sep="\n")
