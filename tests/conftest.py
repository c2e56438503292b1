"""Fixtures shared by every test layer."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from connector.stack import LocalStack


@pytest.fixture
async def broker() -> AsyncIterator[LocalStack]:
    """A real Kafka-protocol broker (embedded Tansu) with every topic of the contract."""
    s = LocalStack()
    await s.start_broker()
    try:
        yield s
    finally:
        await s.stop()
