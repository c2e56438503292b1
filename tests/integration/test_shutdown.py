"""SIGTERM at the awkward moments: while partitions are being assigned, and during start-up.

A stop must close everything the worker started (no "transactional producer fenced" ERROR after
"worker stopped", the defect of a stop that landed in a rebalance), exit 0, lose nothing and
send nothing twice; and a SIGTERM during start-up stops the worker promptly instead of waiting
for start-up to finish first.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from connector.devtools.stack import Follower, LocalStack, Process, produce
from tests.integration.helpers import many, until

pytestmark = pytest.mark.integration

ROUTE = {"smpp": {"provider": "smpp_rest", "batch_max": "20", "concurrency": "16"}}


def log_text(w: Process) -> str:
    return w.log.read_text(errors="replace") if w.log and w.log.exists() else ""


def errors(w: Process) -> list[str]:
    """The worker's ERROR lines and tracebacks (JSON log) from its SIGTERM on ("stopping")."""
    lines = log_text(w).splitlines()
    first = min((i for i, line in enumerate(lines) if '"stopping"' in line), default=0)
    return [line for line in lines[first:]
            if '"level":"error"' in line or '"level":"critical"' in line or line.startswith("Traceback")]


async def when_logged(w: Process, text: str, timeout: float = 60.0, after: int = 0) -> None:
    """Wait until the worker's log (from character ``after``) holds ``text``."""
    deadline = time.monotonic() + timeout
    while text not in log_text(w)[after:]:
        assert w.alive, f"{w.name} exited before logging {text!r}"
        assert time.monotonic() < deadline, f"{w.name} did not log {text!r} within {timeout:.0f}s"
        await asyncio.sleep(0.005)


async def sigterm(w: Process, timeout: float = 40.0) -> tuple[int, float]:
    """SIGTERM ``w``; its exit code and the seconds it took to exit."""
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(w.proc.wait(), timeout)
    return code, round(time.monotonic() - t0, 2)


def after_stopped(w: Process) -> list[str]:
    lines = log_text(w).splitlines()
    last = max((i for i, line in enumerate(lines) if '"worker stopped"' in line), default=len(lines))
    return lines[last + 1:]


async def test_sigterm_while_partitions_are_assigned_closes_every_committer(stack: LocalStack) -> None:
    """A second worker SIGTERMed while it joins (its assignment arrives during its stop), then the
    first SIGTERMed in the rebalance a third worker starts: both exit 0 with no ERROR line (the
    old code left the transactional producers it started during the stop open, and each
    partition's logged "transactional producer fenced" after "worker stopped"), and every input
    ends in exactly one terminal record, sent once."""
    n = 3000
    # slow calls make a revocation's drain long, and so the rebalance: each SIGTERM lands before
    # the worker's assignment arrives, which then comes during its stop
    await stack.set_faults("smpp_rest", latency_ms=400)
    first = await stack.start_worker(routes=ROUTE)
    expected = [f"asg-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, many(n, keys=300, prefix="asg"))
        await until(lambda: f.tally.done(expected) >= n // 6, 60)
        second = await stack.start_worker(routes=ROUTE)
        await when_logged(second, "dispatch started")      # joining: its assignment is on the way
        mark = len(log_text(first))
        code, took = await sigterm(second)
        print(f"\nsecond worker: SIGTERM while joining, exit {code} in {took} s")
        assert code == 0
        assert errors(second) == [] and after_stopped(second) == [], log_text(second)[-3000:]
        # the second's leaving gives every partition back to the first: then a third joins
        await when_logged(first, '"partitions":[0,1,2,3,4,5,6,7,8,9,10,11]', after=mark)
        mark = len(log_text(first))
        third = await stack.start_worker(routes=ROUTE)
        # the rebalance the third began: the first drains its records (slow calls), then rejoins
        await when_logged(first, "because it is rebalancing", after=mark)
        code, took = await sigterm(first)
        print(f"first worker: SIGTERM in a rebalance, exit {code} in {took} s")
        assert code == 0
        assert errors(first) == [] and after_stopped(first) == [], log_text(first)[-3000:]
        assert await f.wait_for(expected, timeout=120, settle_s=2.0), f"missing {len(f.tally.missing(expected))}"
        assert errors(third) == []
    stats = await stack.sim_stats("smpp_rest")
    assert f.tally.missing(expected) == [] and f.tally.duplicates(expected) == 0
    assert stats["messages"] == n
