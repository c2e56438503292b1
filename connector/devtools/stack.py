"""A local stack of real processes: embedded broker, provider simulators and workers.

Used by ``dev``, the integration / fault-injection tests and ``bench``: everything runs as it
does in production (separate processes talking over loopback), so a test can ``kill -9`` a
worker, stall the broker or inject provider faults for real. ``Follower`` reads the terminal
topics from the beginning and tallies, per message, how many terminal records it got.
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
from typing import Any, Iterable, Mapping

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from connector import contract as topics
from connector.devtools.children import child_options
from connector.config import KafkaSettings
from connector.devtools.demo import DEMO_HEADER
from connector.devtools.embedded_broker import EmbeddedBroker, free_port
from connector.devtools.kafka_broker import KafkaCluster
from connector.kafka import apply_topics, client_options, topic_partitions
from connector.devtools.simulators import SIMULATORS

# How the local stack routes traffic: route name -> route settings (provider = simulator name).
# Devices go to ThingSpace, US numbers to Rev.io, Venezuelan ones to Ogangi, the rest to SMPP.
# Smart encoding is on for the number routes; every route blocks premium-rate numbers (default).
LOCAL_ROUTES: dict[str, dict[str, str]] = {
    "smpp": {"provider": "smpp_rest", "channel": "sms", "batch_max": "50", "concurrency": "32",
             "smart_encoding": "true"},
    "revio": {"provider": "revio", "concurrency": "32", "smart_encoding": "true"},
    "ogangi": {"provider": "ogangi", "concurrency": "32", "sender": "24365", "smart_encoding": "true"},
    "thingspace": {"provider": "thingspace", "concurrency": "32"},
    # quiet hours: demo records name a zone where it is night (connector.devtools.demo)
    "quiet": {"provider": "smpp_rest", "channel": "sms", "concurrency": "8", "quiet_hours": "21:00-08:00"},
}
LOCAL_DEFAULT_ROUTE = "smpp"
LOCAL_ROUTING = {"SMS_CONNECTOR_ROUTING__DEVICE_ROUTE": "thingspace",
                 "SMS_CONNECTOR_ROUTING__PREFIX_ROUTES": "+1=revio,+58=ogangi"}


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process
    url: str = ""
    log: Path | None = None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, timeout: float = 30.0) -> int:
        return await stop_process(self.proc, timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


async def wait_http(url: str, timeout: float = 30.0, proc: asyncio.subprocess.Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


async def _announced_url(log: Path, proc: asyncio.subprocess.Process, start: int, timeout: float = 30.0) -> str:
    """The URL a simulator started with ``--port 0`` prints once it listens (its log from ``start``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            if " listening on " in line:
                return line.rsplit(" listening on ", 1)[1].strip()
        if proc.returncode is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode} before listening (see {log})")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"simulator did not listen within {timeout:.0f}s (see {log})")


def kafka_env(k: KafkaSettings) -> dict[str, str]:
    """The SMS_CONNECTOR_KAFKA__* environment that gives a child process these client settings."""
    env = {"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
           "SMS_CONNECTOR_KAFKA__IDEMPOTENT_PRODUCER": str(k.idempotent_producer).lower(),
           "SMS_CONNECTOR_KAFKA__EXACTLY_ONCE": str(k.exactly_once).lower(),
           "SMS_CONNECTOR_KAFKA__GROUP_ID": k.group_id,
           "SMS_CONNECTOR_KAFKA__REPLICATION_FACTOR": str(k.replication_factor),
           "SMS_CONNECTOR_KAFKA__SECURITY_PROTOCOL": k.security_protocol}
    if k.security_protocol.startswith("SASL_"):
        env.update({"SMS_CONNECTOR_KAFKA__SASL_MECHANISM": k.sasl_mechanism,
                    "SMS_CONNECTOR_KAFKA__SASL_USERNAME": k.sasl_username,
                    "SMS_CONNECTOR_KAFKA__SASL_PASSWORD": k.sasl_password.value if k.sasl_password else ""})
    if k.ssl_cafile:
        env["SMS_CONNECTOR_KAFKA__SSL_CAFILE"] = k.ssl_cafile
    return env


def worker_env(kafka: str | KafkaSettings, sims: Mapping[str, str], http_port: int,
               routes: Mapping[str, Mapping[str, str]] | None = None,
               default_route: str = LOCAL_DEFAULT_ROUTE) -> dict[str, str]:
    """Environment that configures a worker for the local stack (a bootstrap address alone means
    the embedded broker, which lacks the idempotent producer and transactions)."""
    if isinstance(kafka, str):
        kafka = KafkaSettings(bootstrap_servers=kafka, idempotent_producer=False, replication_factor=1,
                              exactly_once=False)
    env = {
        **kafka_env(kafka),
        "SMS_CONNECTOR_KAFKA__SESSION_TIMEOUT_S": "10",
        "SMS_CONNECTOR_HTTP__HOST": "127.0.0.1",
        "SMS_CONNECTOR_HTTP__PORT": str(http_port),
        "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": default_route,
        "SMS_CONNECTOR_LOG__FORMAT": "json",
    }
    if routes is None:
        routes = {name: opts for name, opts in LOCAL_ROUTES.items() if opts["provider"] in sims}
        if set(routes) == set(LOCAL_ROUTES):
            env.update(LOCAL_ROUTING)
    for route, opts in routes.items():
        sim = opts["provider"]
        prefix = f"SMS_CONNECTOR_ROUTES__{route.upper()}__"
        env.update({prefix + k.upper(): v for k, v in opts.items()})
        if sim in sims:
            env[prefix + "BASE_URL"] = sims[sim] + SIMULATORS[sim].base_path
        for key, value in SIMULATORS[sim].default_credentials().items():
            env.setdefault(prefix + key.upper(), value)
    return env


@dataclass
class LocalStack:
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sms-connector-")))
    broker: EmbeddedBroker | KafkaCluster | None = None
    owns_broker: bool = True          # False: a broker shared by many stacks (the test session's)
    group_id: str = KafkaSettings.group_id
    simulators: dict[str, Process] = field(default_factory=dict)
    workers: list[Process] = field(default_factory=list)
    _next_worker: int = field(default=0, repr=False)

    @property
    def kafka(self) -> KafkaSettings:
        assert self.broker is not None
        if isinstance(self.broker, KafkaCluster):
            return self.broker.settings(group_id=self.group_id)
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap_servers, idempotent_producer=False,
                             replication_factor=1, group_id=self.group_id, exactly_once=False)

    @property
    def sim_urls(self) -> dict[str, str]:
        return {name: p.url for name, p in self.simulators.items()}

    async def start_broker(self, partitions: int | None = None) -> None:
        if self.broker is None:
            self.broker = EmbeddedBroker(log_path=self.logdir / "broker.log").start()
        await apply_topics(self.kafka, partitions)

    async def spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> tuple[asyncio.subprocess.Process, Path]:
        log = self.logdir / f"{name}.log"
        fh = open(log, "ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connector.cli", *args, stdout=fh, stderr=fh,
            stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **(env or {})}, **child_options())
        fh.close()
        return proc, log

    async def start_simulator(self, name: str, *options: str) -> str:
        # port 0: the simulator binds a free port itself and prints its URL (a port picked here
        # could be taken by another process before the simulator binds it)
        earlier = self.logdir / f"sim-{name}.log"
        start = earlier.stat().st_size if earlier.exists() else 0     # the log is appended to on a restart
        proc, log = await self.spawn(f"sim-{name}", "simulate", name, "--port", "0", *options)
        self.simulators[name] = Process(f"simulator {name}", proc, "", log)   # stop() stops it even if it never answers
        url = await _announced_url(log, proc, start)
        self.simulators[name] = Process(f"simulator {name}", proc, url, log)
        await wait_http(url + "/_sim/health", proc=proc)
        return url

    async def set_faults(self, name: str, **faults: Any) -> None:
        async with aiohttp.ClientSession() as s:
            async with s.put(self.simulators[name].url + "/_sim/faults", data=orjson.dumps(faults)) as r:
                r.raise_for_status()

    async def sim_stats(self, name: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            async with s.get(self.simulators[name].url + "/_sim/stats") as r:
                return orjson.loads(await r.read())

    async def sim_sent_at(self, name: str) -> dict[str, float]:
        """Message id -> epoch of its first send at simulator ``name``."""
        async with aiohttp.ClientSession() as s:
            async with s.get(self.simulators[name].url + "/_sim/sent-at") as r:
                return orjson.loads(await r.read())

    async def sim_calls(self, name: str) -> list[tuple[float, str, str]]:
        """Every message of every call at simulator ``name``, faulted ones included: (epoch, id,
        outcome: accepted, rejected, error, throttle or timeout), in arrival order."""
        async with aiohttp.ClientSession() as s:
            async with s.get(self.simulators[name].url + "/_sim/calls") as r:
                return [(t, cid, outcome) for t, cid, outcome in orjson.loads(await r.read())]

    async def start_worker(self, env: Mapping[str, str] | None = None, http_port: int = 0,
                           routes: Mapping[str, Mapping[str, str]] | None = None,
                           roles: tuple[str, ...] = ("dispatch",)) -> Process:
        assert self.broker is not None
        http_port = http_port or free_port()
        full_env = {**worker_env(self.kafka, self.sim_urls, http_port, routes), **(env or {})}
        role_args = [arg for role in roles for arg in ("--role", role)]
        index = self._next_worker = max(self._next_worker, len(self.workers))   # workers started at once: one log each
        self._next_worker += 1
        proc, log = await self.spawn(f"worker-{index}", "worker", *role_args, env=full_env)
        w = Process(f"worker {index}", proc, f"http://127.0.0.1:{http_port}", log)
        self.workers.append(w)
        await wait_http(w.url + "/healthz", proc=proc)
        return w

    def kill(self) -> None:
        """SIGKILL every process at once (a second Ctrl-C: no orderly stop)."""
        for p in [*self.workers, *self.simulators.values()]:
            p.kill()
        if self.broker is not None and self.broker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.broker.process.kill()

    async def stop(self) -> None:
        for w in self.workers:
            await w.stop()
        for s in self.simulators.values():
            await s.stop(5)
        if self.broker is not None and self.owns_broker:
            self.broker.stop()


async def produce(kafka: KafkaSettings, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
                  topic: str | None = None) -> int:
    """Produce (key, value, headers) records to sms.outbound; returns how many."""
    topic = topic or topics.spec("outbound").name
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    n = 0
    try:
        futures = []
        for key, value, headers in records:
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            n += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


@dataclass
class Tally:
    """Terminal records seen, per message id (``sms.demo.id`` header, else client_message_id)."""

    seen: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (outcome, reason, provider)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # kept when keep_records
    keep_records: bool = False
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)   # (provider, state) on sms.delivery
    smart_encoded: int = 0        # accepted records smart encoding rewrote (original_segments set)
    segments_saved: int = 0       # their original_segments less segments
    # (demo kind, outcome, reason) of terminal records whose metadata names a demo kind (dev's summary)
    kinds: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    delivery_events: list[dict[str, Any]] = field(default_factory=list)    # kept when keep_records

    def done(self, expected: Iterable[str]) -> int:
        return sum(1 for k in expected if self.seen[k] >= 1)

    def missing(self, expected: Iterable[str]) -> list[str]:
        return sorted(k for k in expected if self.seen[k] == 0)

    def duplicates(self, expected: Iterable[str]) -> int:
        return sum(1 for k in expected if self.seen[k] > 1)

    def add(self, role: str, value: bytes | None, headers: Any, key: bytes | None = None,
            timestamp_ms: int | None = None) -> None:
        if role == "delivery":
            try:
                event = orjson.loads(value or b"{}")
            except orjson.JSONDecodeError:
                return
            self.deliveries[(event.get("provider", ""), event.get("state", ""))] += 1
            if self.keep_records:
                self.delivery_events.append(event)
            return
        hdrs = {k: v.decode(errors="replace") for k, v in headers or ()}
        msg_id = hdrs.get(DEMO_HEADER)
        entry: dict[str, Any]
        if role == "dlq":
            entry = {"outcome": "dead-lettered", "reason": hdrs.get(topics.HEADER_ERROR_REASON, ""),
                     "headers": hdrs, "value": value, "key": key}
            self.outcomes[("dead-lettered", entry["reason"], "")] += 1
        else:
            try:
                entry = orjson.loads(value or b"{}")
            except orjson.JSONDecodeError:
                return
            entry["headers"] = hdrs
            msg_id = msg_id or entry.get("client_message_id")
            self.outcomes[(entry.get("outcome", role), entry.get("reason") or "", entry.get("provider") or "")] += 1
            kind = (entry.get("metadata") or {}).get("kind")
            if isinstance(kind, str):
                self.kinds[(kind, entry.get("outcome", role), entry.get("reason") or "")] += 1
            if entry.get("original_segments") is not None and entry.get("outcome") == "accepted":
                self.smart_encoded += 1
                self.segments_saved += entry["original_segments"] - (entry.get("segments") or 0)
        if msg_id:
            self.seen[msg_id] += 1
            if self.keep_records:
                self.records.setdefault(msg_id, []).append(entry)


def committed_isolation(k: KafkaSettings) -> str:
    """How a test or bench reader of the worker's output topics reads: read_committed, as analytics
    consumers must (exactly-once, #16: records of aborted transactions are not counted), except on
    the embedded broker (no idempotent producer, no transactions: the worker runs at-least-once)."""
    return "read_committed" if k.idempotent_producer else "read_uncommitted"


class Follower:
    """Reads accepted / failed / dlq (and sms.delivery) from the beginning into a Tally."""

    def __init__(self, kafka: KafkaSettings, tally: Tally | None = None, isolation: str | None = None) -> None:
        self.kafka = kafka
        self.tally = tally or Tally()
        self.isolation = isolation     # None: read_committed where the broker has transactions
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Follower:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task:
            await self._task

    async def wait_for(self, expected: Iterable[str], timeout: float, settle_s: float = 0.0) -> bool:
        """Wait until every expected id has a terminal record; then ``settle_s`` for duplicates."""
        expected = list(expected)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()
            if self.tally.done(expected) >= len(expected):
                await asyncio.sleep(settle_s)
                return True
            await asyncio.sleep(0.2)
        return False

    async def _run(self) -> None:
        roles = {topics.spec(r).name: r for r in ("accepted", "failed", "dlq", "delivery")}
        isolation = self.isolation or committed_isolation(self.kafka)
        consumer = AIOKafkaConsumer(**client_options(self.kafka), enable_auto_commit=False,
                                    auto_offset_reset="earliest", isolation_level=isolation)
        await consumer.start()
        try:
            parts = [tp for t in roles for tp in await topic_partitions(consumer, t)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=10000)
                for tp, recs in batch.items():
                    for r in recs:
                        self.tally.add(roles[tp.topic], r.value, r.headers, r.key, r.timestamp)
        finally:
            await consumer.stop()
