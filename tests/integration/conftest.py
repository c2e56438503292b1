"""Integration fixtures: a real Kafka-protocol broker, simulators and workers as processes."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from connector.stack import LocalStack


@pytest.fixture
async def stack() -> AsyncIterator[LocalStack]:
    s = LocalStack()
    await s.start_broker()
    await s.start_simulator("smpp_rest")
    try:
        yield s
    finally:
        await s.stop()
        for w in s.workers:   # show what the workers said when a test fails
            if w.log and w.log.exists():
                tail = w.log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {w.name} log tail ({w.log})", *tail, sep="\n")
