"""``sms-connector dev``: the whole pipeline on one machine, for people and for tests.

Starts a ``LocalStack`` (embedded broker, topics, every provider simulator, a worker; each in its
own process, as in production), writes the manifest ``.sms-connector-dev.json``, optionally
produces demo traffic and follows it to its terminal records, and on SIGINT, SIGTERM or SIGHUP
stops everything it started (a second signal kills instead of waiting). Its children also die if
``dev`` itself is killed (connector.devtools.children).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp

from connector import contract as topics
from connector.ops import devmanifest
from connector.devtools.demo import DEMO_GUARDS_ENV, DEMO_HEADER, generate
from connector.devtools.embedded_broker import free_port
from connector.devtools.simulators import SIMULATORS
from connector.config import load
from connector.ops.operations import CALLBACK_PATH, register_callbacks
from connector.devtools.stack import LOCAL_ROUTES, Follower, LocalStack, Tally, produce, worker_env
from connector.ops.snapshot import Snapshot, parse_metrics
from connector.ops.status import LiveStatus


async def run_dev(*, demo: int = 0, until_done: bool = False, timeout: float = 300.0, http_port: int = 8080,
                  manifest_path: str = ".sms-connector-dev.json", out: Any = None) -> int:
    out = out or sys.stdout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stack = LocalStack()
    manifest = Path(manifest_path)
    starting = asyncio.current_task()   # cancelled by a signal until everything has started

    def on_signal() -> None:
        if stop.is_set():           # the second one: no orderly stop
            stack.kill()
        stop.set()
        if starting is not None:
            starting.cancel()

    # SIGHUP too: closing the terminal that runs `make dev` must stop everything, not orphan it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)

    def say(text: str) -> None:
        with contextlib.suppress(OSError):      # the terminal may be gone (SIGHUP)
            print(text, file=out, flush=True)

    try:
        await stack.start_broker()
        say(f"broker     {stack.kafka.bootstrap_servers} (embedded, in-memory); topics created")
        say("guarantee  at-least-once: the embedded broker (Tansu) has no Kafka transactions, so a crash may "
            "repeat a record (never lose one); exactly-once (kafka.exactly_once) needs Apache Kafka")
        for name in sorted({r["provider"] for r in LOCAL_ROUTES.values()}):
            url = await stack.start_simulator(name, *(("--deliver-callbacks",) if name == "thingspace" else ()))
            say(f"simulator  {name} at {url}{SIMULATORS[name].base_path}")
        http_port = http_port or free_port()
        base = f"http://127.0.0.1:{http_port}"
        callback_env = {"SMS_CONNECTOR_CALLBACKS__PUBLIC_URL": base,
                        "SMS_CONNECTOR_CALLBACKS__THINGSPACE_USERNAME": "dev-callbacks",
                        "SMS_CONNECTOR_CALLBACKS__THINGSPACE_PASSWORD": secrets.token_urlsafe(12)}
        callback_env |= DEMO_GUARDS_ENV      # the demo's spend budget and rate limit (connector.devtools.demo)
        worker = await stack.start_worker(env=callback_env, http_port=http_port, roles=("all",))
        say(f"worker     metrics {worker.url}/metrics  health {worker.url}/healthz  logs {stack.logdir}")
        environment = worker_env(stack.kafka.bootstrap_servers, stack.sim_urls, http_port) | callback_env
        settings = load(environ=environment)
        for route, service, url in await register_callbacks(settings, None):
            say(f"callbacks  {service} of route {route} -> {url}")
        devmanifest.write(manifest, {
            "bootstrap_servers": stack.kafka.bootstrap_servers,
            "topics": {role: s.name for role, s in topics.specs().items()},
            "metrics_url": f"{worker.url}/metrics",
            "health_url": f"{worker.url}/healthz",
            "ready_url": f"{worker.url}/readyz",
            "simulators": {name: {"base_url": url + SIMULATORS[name].base_path,
                                  "credentials": SIMULATORS[name].default_credentials()}
                           for name, url in stack.sim_urls.items()},
            "callback_urls": {"thingspace": {"url": f"{worker.url}{CALLBACK_PATH}",
                                             "username": callback_env["SMS_CONNECTOR_CALLBACKS__THINGSPACE_USERNAME"],
                                             "password": callback_env["SMS_CONNECTOR_CALLBACKS__THINGSPACE_PASSWORD"]}},
            "logs": str(stack.logdir),
            # What the worker runs with: the operator commands run here configure themselves from it.
            "environment": environment,
        })
        say(f"manifest   {manifest.resolve()}")
        starting = None
        if demo:
            code = await _demo(stack, demo, until_done, timeout, stop, worker.proc, say, out)
            if not until_done:
                say("running; Ctrl-C to stop")
                await stop.wait()
            return code
        say("running; Ctrl-C to stop")
        await stop.wait()
        return 0
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        return 0                    # stopped by a signal while starting
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stack.kill)     # another signal while stopping: hurry
        await stack.stop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(FileNotFoundError):
            manifest.unlink()
        say("stopped")


async def _worker_metrics(worker_url: str) -> Snapshot:
    """The worker's metrics as ``status`` reads them (empty when they cannot be read)."""
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{worker_url}/metrics") as r:
            return parse_metrics(await r.text())
    except aiohttp.ClientError:
        return Snapshot()


# The demo's kinds of message that exercise a guard, in the summary's order (connector.devtools.demo).
GUARD_KINDS = {"smart": "smart encoding", "blocked": "premium-rate recipients", "scheduled": "send_at",
               "otp": "bypass_quiet_hours"}


def guard_lines(tally: Tally, held: int, held_done: int, snap: Snapshot, partitions: int) -> list[str]:
    """The summary's lines on the cost guards: what each guard's demo messages ended as, what
    waits, and the rate limits with this worker's share."""
    lines = []
    for kind, what in GUARD_KINDS.items():
        ends = sorted((n, f"{outcome}{' ' + reason if reason else ''}")
                      for (k, outcome, reason), n in tally.kinds.items() if k == kind)
        if ends:
            lines.append(f"  {kind:14} {sum(n for n, _ in ends):7}  ({what}) "
                         + ", ".join(f"{end} {n}" for n, end in reversed(ends)))
    if tally.smart_encoded:
        lines.append(f"  smart encoding: {tally.smart_encoded} accepted messages sent as GSM-7, "
                     f"{tally.segments_saved} segments saved")
    if snap.deferred or held:
        lines.append("  deferred       " + ", ".join(f"reason={reason} {count:.0f}"
                                                     for reason, count in sorted(snap.deferred.items()))
                     + f"; still waiting for the end of quiet hours {held - held_done} (not expected yet)")
    for (route, scope, window), budget in sorted(snap.budget_limit.items()):
        spent = snap.budget_spent.get((route, scope, window), 0.0)
        lines.append(f"  budget         route {route}{' region ' + scope if scope else ''}: {spent:.0f} of "
                     f"{budget:.0f} segments per {window} spent")
    for route, rate in sorted(snap.rate_limit.items()):
        if rate:
            lines.append(f"  rate limit     route {route}: this worker sends at most {rate:.4g} segments/s, its "
                         f"share of the route's rate_limit (it owns {snap.partitions_assigned:.0f} of {partitions} "
                         f"sms.outbound partitions)")
    return lines


async def _demo(stack: LocalStack, n: int, until_done: bool, timeout: float, stop: asyncio.Event,
                worker: asyncio.subprocess.Process, say: Callable[[str], None], out: Any = None) -> int:
    records = list(generate(n, prefix=f"demo{int(time.time())}"))
    # held for quiet hours (until morning in their zone): no terminal record while the demo runs
    held = [r.demo_id for r in records if r.kind == "held"]
    expected = [r.demo_id for r in records if r.kind != "held"]
    n = len(expected)
    t0 = time.monotonic()
    # On a terminal the status view (connector.ops.status) replaces the progress lines; elsewhere
    # (tests, CI, a pipe) LiveStatus does nothing and the plain lines are printed as before.
    async with Follower(stack.kafka) as follower, \
            LiveStatus([f"{stack.workers[0].url}/metrics"], stack.kafka, out or sys.stdout,
                       dev_broker=True) as status:
        emit = status.say if status.active else say
        await produce(stack.kafka, ((r.key, r.value, [(DEMO_HEADER, r.demo_id.encode())]) for r in records))
        emit(f"demo       produced {len(records)} records in {time.monotonic() - t0:.1f}s")
        tally = follower.tally
        deadline = time.monotonic() + timeout
        last = -1
        progress = ""
        while not stop.is_set():
            done = tally.done(expected)
            if done != last:
                delivered = sum(tally.deliveries.values())
                progress = (f"progress   {done}/{n} terminal ({done / max(time.monotonic() - t0, 1e-6):,.0f}/s), "
                            f"{delivered} delivery events")
                if not status.active:
                    say(progress)
                last = done
            await status.tick(note=progress)
            if done >= n:
                await asyncio.sleep(1.0)   # give any duplicate a chance to show up
                await status.tick(note=progress, force=True)
                break
            if time.monotonic() > deadline:
                emit(f"timeout    after {timeout:.0f}s")
                break
            if worker.returncode is not None:
                emit(f"worker exited with {worker.returncode}")
                break
            await asyncio.sleep(0.5)
    elapsed = time.monotonic() - t0
    done = tally.done(expected)
    say("")
    say(f"summary    {done}/{n} messages reached a terminal record in {elapsed:.1f}s ({done / max(elapsed, 1e-6):,.0f}/s)")
    for (outcome, reason, provider), count in sorted(tally.outcomes.items()):
        detail = ", ".join(x for x in (provider and f"provider={provider}", reason and f"reason={reason}") if x)
        say(f"  {outcome:14} {count:7}  {detail}")
    for line in guard_lines(tally, len(held), tally.done(held), await _worker_metrics(stack.workers[0].url),
                            topics.specs()["outbound"].partitions):
        say(line)
    if tally.deliveries:
        say("  delivery events so far (sms.delivery): " + ", ".join(
            f"{p} {s} {c}" for (p, s), c in sorted(tally.deliveries.items())))
    missing, dups = tally.missing(expected), tally.duplicates(expected)
    say(f"  missing {len(missing)}, duplicates {dups}")
    if missing:
        say(f"  first missing: {', '.join(missing[:5])}")
    return 0 if not missing and not dups else 1
