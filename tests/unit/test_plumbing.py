"""``close_reader``: a reader's stop is waited for briefly, never for TLS's 30 s close."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from connector.streams import plumbing
from connector.streams.plumbing import close_reader


class SlowToClose:
    def __init__(self, seconds: float, error: Exception | None = None) -> None:
        self.seconds, self.error, self.stopped = seconds, error, False

    async def stop(self) -> None:
        await asyncio.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        self.stopped = True


async def test_a_close_that_hangs_finishes_in_the_background() -> None:
    reader = SlowToClose(0.5)
    began = time.monotonic()
    await close_reader(reader, wait_s=0.05)  # type: ignore[arg-type]
    assert time.monotonic() - began < 0.4 and not reader.stopped
    assert len(plumbing._CLOSING) == 1
    await asyncio.sleep(0.6)
    assert reader.stopped and not plumbing._CLOSING


async def test_a_prompt_close_is_waited_for_and_its_failure_raised() -> None:
    reader = SlowToClose(0)
    await close_reader(reader)  # type: ignore[arg-type]
    assert reader.stopped
    with pytest.raises(RuntimeError, match="broken"):
        await close_reader(SlowToClose(0, RuntimeError("broken")))  # type: ignore[arg-type]


async def test_a_late_failure_in_the_background_is_not_reported() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    await close_reader(SlowToClose(0.1, RuntimeError("late")), wait_s=0.01)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    gc.collect()
    assert errors == []
