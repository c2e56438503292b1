"""SIGTERM at the awkward moments: while partitions are being assigned, and during start-up.

A stop must close everything the worker started (no "transactional producer fenced" ERROR after
"worker stopped", the defect of a stop that landed in a rebalance), exit 0, lose nothing and
send nothing twice; and a SIGTERM during start-up stops the worker promptly instead of waiting
for start-up to finish first.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from datetime import datetime

import pytest

from connector.devtools.embedded_broker import free_port
from connector.devtools.stack import Follower, LocalStack, Process, produce, worker_env
from tests.integration.helpers import FULL, many, until

pytestmark = pytest.mark.integration

ROUTE = {"smpp": {"provider": "smpp_rest", "batch_max": "20", "concurrency": "16"}}


def log_text(w: Process) -> str:
    return w.log.read_text(errors="replace") if w.log and w.log.exists() else ""


# aiokafka logs at ERROR a group coordinator not yet available to a new group's first lookup
# (a fresh broker or group, at any start), and retries: not the stop's doing
TRANSIENT = "GroupCoordinatorNotAvailableError"


def errors(w: Process) -> list[str]:
    """The worker's ERROR lines and tracebacks (JSON log) from its SIGTERM on ("stopping")."""
    lines = log_text(w).splitlines()
    first = min((i for i, line in enumerate(lines) if '"stopping"' in line), default=0)
    return [line for line in lines[first:]
            if ('"level":"error"' in line or '"level":"critical"' in line or line.startswith("Traceback"))
            and TRANSIENT not in line]


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


# Points of a worker's start-up (every role) a SIGTERM lands right after: its signal handlers
# installed (the broker access check and the exactly-once probe next), the probe done (the inbound producer and the opt-out table next), the opt-out table loaded (the
# callbacks' transactional ids and receipts next), the HTTP server up (each role's own start:
# dispatch's producer, consumer and group join, the correlator's, the pollers'), dispatch
# joining its group.
START_POINTS = ["worker starting", "exactly-once: records", "opt-out table loaded", "worker started", "dispatch started"]
# make test: every other point (one in the app's own start-up on each side of the probe, and the
# roles' start); make faults: all five
POINTS = START_POINTS if FULL else START_POINTS[::2]


async def spawn_worker(stack: LocalStack, roles: tuple[str, ...] = ("all",)) -> Process:
    """A worker process, not waited for (``start_worker`` waits until start-up is over)."""
    env = worker_env(stack.kafka, stack.sim_urls, free_port(), ROUTE)
    proc, log = await stack.spawn(f"worker-{len(stack.workers)}", "worker",
                                  *[a for r in roles for a in ("--role", r)], env=env)
    w = Process(f"worker {len(stack.workers)}", proc, "", log)
    stack.workers.append(w)
    return w


def logged_at(w: Process, msg: str) -> float:
    """When the worker first logged ``msg`` (epoch seconds, from its JSON log)."""
    for line in log_text(w).splitlines():
        if f'"msg":"{msg}"' in line:
            return datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"{w.name} never logged {msg!r}")


def said_after_stopping(w: Process, *msgs: str) -> list[str]:
    lines = log_text(w).splitlines()
    first = min((i for i, line in enumerate(lines) if '"stopping"' in line), default=len(lines))
    return [m for m in msgs for line in lines[first:] if f'"msg":"{m}"' in line]


async def test_sigterm_during_start_up_stops_promptly_and_cleanly(stack: LocalStack) -> None:
    """A SIGTERM at several points of start-up (every role): the worker stops at once, instead of
    finishing its start-up first (the old code went on to log "opt-out table loaded", "callbacks
    ready" and "worker started" after "stopping", 1.5 to 3.4 s of it here), exits 0 with "worker
    stopped" and no ERROR or traceback; the messages waiting meanwhile are then each sent once,
    with one terminal record, by a worker started normally (nothing was committed for them)."""
    n = 200
    expected = [f"boot-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, many(n, keys=50, prefix="boot"))
        to_exit: dict[str, float] = {}
        stop_s: dict[str, float] = {}
        for point in POINTS:
            w = await spawn_worker(stack)
            await when_logged(w, point)
            code, to_exit[point] = await sigterm(w)
            assert code == 0, log_text(w)[-3000:]
            assert errors(w) == [], log_text(w)[-3000:]
            stop_s[point] = round(logged_at(w, "worker stopped") - logged_at(w, "stopping"), 2)
            if point in START_POINTS[:3]:    # the start-up of the app itself: cancelled, none of it goes on
                assert said_after_stopping(w, "opt-out table loaded", "callbacks ready", "worker started") == [], \
                    log_text(w)[-3000:]
                assert said_after_stopping(w, "start-up cancelled: stopped before the worker started")
        print(f"\nSIGTERM during start-up: 'stopping' to 'worker stopped' (s) {stop_s}; SIGTERM to exit (s) {to_exit}")
        # Up to the roles' starts a stop's own work is closing clients that did nothing yet (tens
        # of ms); the bound leaves room for a loaded machine, and is under what start-up took
        # after a SIGTERM before. Once the roles' consumers are in their groups (the last point) a
        # stop is a normal one (a rebalance under way is let finish, LeaveGroup): the chart's
        # bound for a stop (test_security.py: shortest grace period less 10 s).
        assert max(stop_s[p] for p in POINTS[:-1]) < 1.5, stop_s
        assert stop_s[START_POINTS[-1]] < 20, stop_s
        await stack.start_worker(routes=ROUTE)
        assert await f.wait_for(expected, timeout=60, settle_s=2.0)
    assert f.tally.missing(expected) == [] and f.tally.duplicates(expected) == 0
    assert (await stack.sim_stats("smpp_rest"))["messages"] == n
