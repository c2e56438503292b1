"""``sms-connector dev``: the whole pipeline on one machine, for people and for tests.

Starts the embedded broker, creates the topics, starts every provider simulator and a worker
(each in its own process, as in production), writes the manifest ``.sms-connector-dev.json``,
optionally produces demo traffic and follows it to its terminal records, and on SIGINT/SIGTERM
stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import topics
from connector.config import KafkaSettings
from connector.demo import DEMO_HEADER, generate
from connector.embedded_broker import EmbeddedBroker, free_port
from connector.kafka import apply_topics, client_options
from connector.simulators import SIMULATORS

# How dev routes traffic: route name -> (provider/simulator name, provider-specific settings).
DEV_ROUTES: dict[str, dict[str, str]] = {
    "smpp": {"provider": "smpp_rest", "channel": "sms", "batch_max": "50", "concurrency": "32"},
}
DEV_DEFAULT_ROUTE = "smpp"


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    url: str = ""


@dataclass
class Tally:
    """Terminal records seen per demo id."""

    expected: set[str]
    seen: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (outcome, reason, provider)

    @property
    def done(self) -> int:
        return sum(1 for k in self.expected if self.seen[k] >= 1)

    @property
    def duplicates(self) -> int:
        return sum(1 for k in self.expected if self.seen[k] > 1)

    @property
    def missing(self) -> list[str]:
        return sorted(k for k in self.expected if self.seen[k] == 0)

    def add(self, topic_role: str, value: bytes | None, headers: Any) -> None:
        demo_id = next((v.decode() for k, v in headers or () if k == DEMO_HEADER), None)
        if topic_role == "dlq":
            self.outcomes[("dead-lettered", _header(headers, topics.HEADER_ERROR_REASON) or "", "")] += 1
        else:
            try:
                rec = orjson.loads(value or b"{}")
            except orjson.JSONDecodeError:
                return
            demo_id = demo_id or rec.get("client_message_id")
            self.outcomes[(rec.get("outcome", topic_role), rec.get("reason") or "", rec.get("provider") or "")] += 1
        if demo_id:
            self.seen[demo_id] += 1


def _header(headers: Any, name: str) -> str | None:
    return next((v.decode() for k, v in headers or () if k == name), None)


async def _spawn(name: str, *args: str, env: dict[str, str] | None = None, log: Path) -> asyncio.subprocess.Process:
    fh = open(log, "ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector.cli", *args, stdout=fh, stderr=fh, stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, start_new_session=True)


async def _wait_http(url: str, timeout: float = 20.0, proc: asyncio.subprocess.Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(f"process for {url} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


async def _stop(child: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(child.wait(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


def worker_env(bootstrap: str, sims: dict[str, str], http_port: int) -> dict[str, str]:
    """Environment that configures a worker for the dev stack (also used by tests)."""
    env = {
        "SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "SMS_CONNECTOR_KAFKA__IDEMPOTENT_PRODUCER": "false",   # the embedded broker lacks it
        "SMS_CONNECTOR_KAFKA__SESSION_TIMEOUT_S": "10",
        "SMS_CONNECTOR_HTTP__HOST": "127.0.0.1",
        "SMS_CONNECTOR_HTTP__PORT": str(http_port),
        "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": DEV_DEFAULT_ROUTE,
        "SMS_CONNECTOR_LOG__FORMAT": "json",
    }
    for route, opts in DEV_ROUTES.items():
        sim = opts["provider"]
        prefix = f"SMS_CONNECTOR_ROUTES__{route.upper()}__"
        env.update({prefix + k.upper(): v for k, v in opts.items()})
        env[prefix + "BASE_URL"] = sims[sim]
        for key, value in SIMULATORS[sim].default_credentials().items():
            env[prefix + key.upper()] = value
    return env


async def run_dev(*, demo: int = 0, until_done: bool = False, timeout: float = 300.0, http_port: int = 8080,
                  manifest_path: str = ".sms-connector-dev.json", out: Any = None) -> int:
    out = out or sys.stdout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logdir = Path(tempfile.mkdtemp(prefix="sms-connector-dev-"))
    broker = EmbeddedBroker(log_path=logdir / "broker.log")
    children: list[Child] = []
    manifest = Path(manifest_path)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        broker.start()
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, idempotent_producer=False,
                              replication_factor=1)
        await apply_topics(kafka)
        say(f"broker     {broker.bootstrap_servers} (embedded, in-memory); topics created")
        sims: dict[str, str] = {}
        for name in sorted({r["provider"] for r in DEV_ROUTES.values()}):
            port = free_port()
            proc = await _spawn(name, "simulate", name, "--port", str(port), log=logdir / f"sim-{name}.log")
            url = f"http://127.0.0.1:{port}"
            await _wait_http(url + "/_sim/health", proc=proc)
            children.append(Child(f"simulator {name}", proc, url))
            sims[name] = url
            say(f"simulator  {name} at {url}")
        http_port = http_port or free_port()
        worker = await _spawn("worker", "worker", env=worker_env(broker.bootstrap_servers, sims, http_port),
                              log=logdir / "worker.log")
        base = f"http://127.0.0.1:{http_port}"
        children.append(Child("worker", worker, base))
        await _wait_http(base + "/healthz", proc=worker)
        say(f"worker     metrics {base}/metrics  health {base}/healthz  logs {logdir}")
        manifest.write_bytes(orjson.dumps({
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": {role: s.name for role, s in topics.specs().items()},
            "metrics_url": f"{base}/metrics",
            "health_url": f"{base}/healthz",
            "ready_url": f"{base}/readyz",
            "simulators": {name: {"base_url": url, "credentials": SIMULATORS[name].default_credentials()}
                           for name, url in sims.items()},
            "logs": str(logdir),
        }, option=orjson.OPT_INDENT_2))
        say(f"manifest   {manifest.resolve()}")
        if demo:
            return await _demo(kafka, demo, until_done, timeout, stop, worker, say)
        say("running; Ctrl-C to stop")
        await stop.wait()
        return 0
    finally:
        for child in reversed(children):
            await _stop(child.proc)
        broker.stop()
        with contextlib.suppress(FileNotFoundError):
            manifest.unlink()
        say("stopped")


async def _demo(kafka: KafkaSettings, n: int, until_done: bool, timeout: float, stop: asyncio.Event,
                worker: asyncio.subprocess.Process, say: Any) -> int:
    records = list(generate(n, prefix=f"demo{int(time.time())}"))
    tally = Tally(expected={r.demo_id for r in records})
    follow = asyncio.create_task(_follow(kafka, tally, stop))
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", linger_ms=5)
    await producer.start()
    t0 = time.monotonic()
    try:
        futures = [await producer.send(topics.spec("outbound").name, value=r.value, key=r.key,
                                       headers=[(DEMO_HEADER, r.demo_id.encode())]) for r in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    say(f"demo       produced {n} records in {time.monotonic() - t0:.1f}s")
    deadline = time.monotonic() + timeout
    last = -1
    while not stop.is_set():
        done = tally.done
        if done != last:
            rate = done / max(time.monotonic() - t0, 1e-6)
            say(f"progress   {done}/{n} terminal ({rate:,.0f}/s)")
            last = done
        if done >= n and until_done:
            await asyncio.sleep(1.0)   # give any duplicate a chance to show up
            break
        if until_done and time.monotonic() > deadline:
            break
        if worker.returncode is not None:
            say(f"worker exited with {worker.returncode}")
            break
        await asyncio.sleep(0.5)
    follow.cancel()
    elapsed = time.monotonic() - t0
    say("")
    say(f"summary    {tally.done}/{n} messages reached a terminal record in {elapsed:.1f}s "
        f"({tally.done / max(elapsed, 1e-6):,.0f}/s)")
    for (outcome, reason, provider), count in sorted(tally.outcomes.items()):
        detail = ", ".join(x for x in (provider and f"provider={provider}", reason and f"reason={reason}") if x)
        say(f"  {outcome:14} {count:7}  {detail}")
    missing, dups = tally.missing, tally.duplicates
    say(f"  missing {len(missing)}, duplicates {dups}")
    if missing:
        say(f"  first missing: {', '.join(missing[:5])}")
    if not until_done:
        await stop.wait()
    return 0 if not missing and not dups else 1


async def _follow(kafka: KafkaSettings, tally: Tally, stop: asyncio.Event) -> None:
    roles = {topics.spec(r).name: r for r in ("accepted", "failed", "dlq")}
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in roles for p in (consumer.partitions_for_topic(t) or
                                                                await _partitions(consumer, t))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, recs in batch.items():
                for r in recs:
                    tally.add(roles[tp.topic], r.value, r.headers)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return parts
        await consumer._client.force_metadata_update()  # noqa: SLF001 - no public way to refresh
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions")
