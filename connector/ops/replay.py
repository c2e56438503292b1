"""``sms-connector dlq replay``: send dead-lettered or failed records through the pipeline again.

Reads ``sms.outbound.dlq`` or ``sms.outbound.failed`` from the beginning to its current end,
keeps the records that match every ``--filter``, and produces each one's *original* outbound
record to ``sms.outbound`` again: the original key, value and headers, plus one header,
``sms.replayed-from`` = ``<topic>:<partition>:<offset>`` of the record it was replayed from (an
older ``sms.replayed-from`` is replaced). The value is the original bytes, so the
``client_message_id`` is the original one and everything keyed on it still holds: the SMPP
gateway recognises a resend by ``clientMessageId``, results and delivery events join by it.

Where the original comes from:

- ``sms.outbound.dlq``: the dead-letter record *is* the original (key, value and headers
  untouched); the headers the dispatcher added (``sms.source.*``, ``sms.error.*``) are removed.
- ``sms.outbound.failed``: a ``FailedSms`` result does not carry the text, so the original is read
  back from where the result's ``sms.source.topic`` / ``partition`` / ``offset`` headers point
  (``sms.outbound``). When it is gone (``sms.outbound`` keeps 7 days, failed results 14) or is not
  the same message (another ``client_message_id``), the record is reported as missing, nothing is
  produced for it, and the command exits 1.

Filters: ``FIELD=VALUE[,VALUE...]``; several values of one field match any of them, several
fields must all match. Fields: ``reason`` (DLQ: the ``sms.error.reason`` header; failed: the
result's ``reason``), ``provider``, ``route``, ``client_message_id`` (alias ``id``; read from
the JSON value, absent when it does not decode) and ``key`` (the record key).

Reading to the end (``streams.plumbing.batches_to_end``): the end offsets are taken at the
start, and the read stops when every partition's position has reached them. A fetch returns
whole batches, so this is complete even on the dev broker (Tansu), whose ListOffsets answer is
too low for multi-record batches. Records produced to the topic while the replay runs are not
replayed (unless they share a batch with the end). After ``max_quiet_s`` (10 s) without records
the read stops whatever the offsets say (``stopped_quiet``).

No consumer group: the replay assigns the partitions itself and commits nothing, so it never
disturbs a group and can be re-run. It has no memory either: running it twice replays twice.
Use ``--dry-run`` to see the count first, and ``--filter`` / ``--limit`` to narrow it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connector import contract as topics
from connector import retries
from connector.config import ConfigError, KafkaSettings

__all__ = ["FILTER_FIELDS", "HEADER_REPLAYED_FROM", "ReplaySummary", "dlq_group", "kafka_settings",
           "matches", "parse_filters", "record_facts", "replay", "replay_headers", "topic_role"]

HEADER_REPLAYED_FROM = topics.HEADER_REPLAYED_FROM
FILTER_FIELDS = ("reason", "provider", "route", "client_message_id", "key")
_ALIASES = {"id": "client_message_id", "cid": "client_message_id"}
# Headers the dispatcher adds to a dead-lettered record (and ours, and a retry record's): not part of
# the original; a replayed record starts again as a first pass.
_ADDED_HEADERS = retries.SOURCE_HEADERS | retries.RETRY_HEADERS | frozenset({
    topics.HEADER_ERROR_REASON, topics.HEADER_ERROR_MESSAGE, topics.HEADER_ERROR_FIELD, topics.HEADER_ERROR_AT,
    HEADER_REPLAYED_FROM})

Filters = dict[str, frozenset[str]]
Headers = list[tuple[str, bytes]]
Progress = Callable[[int, int, int], None]   # (scanned, total estimate, matched)


def parse_filters(items: Iterable[str]) -> Filters:
    """``["reason=invalid-record", "route=smpp,revio"]`` -> ``{"reason": {...}, "route": {...}}``.

    ValueError says what is wrong."""
    out: dict[str, set[str]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        name = _ALIASES.get(name, name)
        if not sep or not name:
            raise ValueError(f"filter {item!r} is not FIELD=VALUE (fields: {', '.join(FILTER_FIELDS)})")
        if name not in FILTER_FIELDS:
            raise ValueError(f"unknown filter field {name!r} (fields: {', '.join(FILTER_FIELDS)})")
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if not values:
            raise ValueError(f"filter {item!r} has no value")
        out.setdefault(name, set()).update(values)
    return {k: frozenset(v) for k, v in out.items()}


def topic_role(topic: str) -> tuple[str, str]:
    """``(role, topic name)`` for a topic name or role: ``dlq`` or ``failed``; ValueError otherwise."""
    for role in ("dlq", "failed"):
        name = topics.spec(role).name
        if topic in (role, name):
            return role, name
    raise ValueError(f"cannot replay {topic!r}: replay reads {topics.spec('dlq').name} or "
                     f"{topics.spec('failed').name}")


def _headers(raw: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in raw or ()}


def _json(value: bytes | None) -> dict[str, Any]:
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def record_facts(role: str, key: bytes | None, value: bytes | None,
                 headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str | None]:
    """What filters look at, for one DLQ or failed record."""
    data = _json(value)
    if role == "dlq":
        reason = _headers(headers).get(topics.HEADER_ERROR_REASON)
    else:
        reason = data.get("reason")

    def text(v: Any) -> str | None:
        return v if isinstance(v, str) else None

    return {"reason": text(reason), "provider": text(data.get("provider")), "route": text(data.get("route")),
            "client_message_id": text(data.get("client_message_id")),
            "key": key.decode("utf-8", "replace") if key is not None else None}


def matches(facts: Mapping[str, str | None], filters: Filters) -> bool:
    return all(facts.get(name) in values for name, values in filters.items())


def replay_headers(headers: Sequence[tuple[str, bytes]] | None, topic: str, partition: int, offset: int) -> Headers:
    """The original's headers without what the pipeline added, plus ``sms.replayed-from``."""
    kept = [(k, v) for k, v in headers or () if k not in _ADDED_HEADERS]
    return kept + [(HEADER_REPLAYED_FROM, f"{topic}:{partition}:{offset}".encode())]


@dataclass
class ReplaySummary:
    topic: str
    target: str
    filters: Filters
    dry_run: bool
    scanned: int = 0
    matched: int = 0
    replayed: int = 0               # produced (0 on a dry run)
    by_reason: Counter[str] = field(default_factory=Counter)   # matched records by reason
    missing: list[str] = field(default_factory=list)   # matched failed records whose original is gone
    limited: bool = False           # stopped at --limit
    stopped_quiet: bool = False     # stopped after max_quiet_s without reaching the end offsets

    @property
    def ok(self) -> bool:
        return not self.missing

    def lines(self) -> list[str]:
        flt = " ".join(f"{k}={','.join(sorted(v))}" for k, v in self.filters.items()) or "none"
        out = [f"{self.topic} -> {self.target} (filters: {flt})",
               f"scanned {self.scanned}, matched {self.matched}, "
               + (f"would replay {self.matched - len(self.missing)} (dry run: nothing produced)" if self.dry_run
                  else f"replayed {self.replayed}")]
        if self.by_reason:
            out.append("by reason: " + ", ".join(f"{r or '(none)'} {n}" for r, n in self.by_reason.most_common()))
        if self.limited:
            out.append("stopped at --limit")
        if self.stopped_quiet:
            out.append("stopped after a long quiet period before the end offsets were reached")
        if self.missing:
            out.append(f"{len(self.missing)} original(s) not found, not replayed: " + "; ".join(self.missing[:10])
                       + (" ..." if len(self.missing) > 10 else ""))
        return out


class _Originals:
    """Reads single records back from ``sms.outbound`` by partition and offset."""

    def __init__(self, kafka: KafkaSettings, quiet_s: float) -> None:
        self.kafka = kafka
        self.quiet_s = quiet_s
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: TopicPartition | None = None
        self._cache: dict[tuple[str, int, int], Any] = {}

    async def get(self, topic: str, partition: int, offset: int) -> Any:
        hit = self._cache.pop((topic, partition, offset), None)
        if hit is not None:
            return hit
        consumer = await self._start()
        tp = TopicPartition(topic, partition)
        if self._assigned != tp:
            consumer.assign([tp])
            self._assigned = tp
        consumer.seek(tp, offset)
        self._cache.clear()
        quiet_until = time.monotonic() + self.quiet_s
        while time.monotonic() < quiet_until:
            records = (await consumer.getmany(tp, timeout_ms=200, max_records=500)).get(tp, [])
            if not records:
                continue
            found = None
            for r in records:
                if r.offset == offset:
                    found = r
                elif r.offset > offset:
                    self._cache[(topic, partition, r.offset)] = r
            if found is not None or records[-1].offset > offset:
                return found          # None: the offset is gone (retention, compaction)
            quiet_until = time.monotonic() + self.quiet_s
        return None

    async def _start(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            from connector.streams.plumbing import groupless_consumer

            self._consumer = groupless_consumer(self.kafka)
            await self._consumer.start()
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            from connector.streams.plumbing import close_reader

            await close_reader(self._consumer)


async def replay(kafka: KafkaSettings, topic: str, filters: Filters | None = None, *, dry_run: bool = False,
                 limit: int | None = None, progress: Progress | None = None, quiet_s: float = 1.0,
                 max_quiet_s: float = 10.0, notice: Callable[[str], None] | None = None) -> ReplaySummary:
    """Replay the matching records of ``topic`` (``dlq`` / ``failed`` or their names) to sms.outbound."""
    from connector.kafka import start_producer, topic_partitions
    from connector.streams.plumbing import IdleTimeout, batches_to_end, close_reader, groupless_consumer, stop_client

    role, name = topic_role(topic)
    target = topics.spec("outbound").name
    summary = ReplaySummary(topic=name, target=target, filters=dict(filters or {}), dry_run=dry_run)
    consumer = groupless_consumer(kafka)
    producer: AIOKafkaProducer | None = None
    originals = _Originals(kafka, quiet_s=max(quiet_s, 1.0)) if role == "failed" else None
    pending: list[asyncio.Future[Any]] = []
    try:
        await consumer.start()
        parts = await topic_partitions(consumer, name, attempts=20)
        consumer.assign(parts)
        begin = await consumer.beginning_offsets(parts)
        end = await consumer.end_offsets(parts)
        total = sum(max(0, end[tp] - begin[tp]) for tp in parts)
        if not dry_run:
            producer = await start_producer(kafka, notice, acks="all", linger_ms=5)
        if progress:
            progress(0, total, 0)
        try:
            async for records in batches_to_end(consumer, {tp: None for tp in parts}, idle_timeout_s=max_quiet_s,
                                                max_records=500):
                for rec in records:
                    summary.scanned += 1
                    facts = record_facts(role, rec.key, rec.value, rec.headers)
                    if not matches(facts, summary.filters):
                        continue
                    summary.matched += 1
                    summary.by_reason[facts["reason"] or ""] += 1
                    out = await _original(role, rec, facts, originals, summary)
                    if out is not None and producer is not None:
                        key, value, headers = out
                        pending.append(await producer.send(target, value=value, key=key, headers=headers))
                        summary.replayed += 1
                        if len(pending) >= 500:
                            await asyncio.gather(*pending)
                            pending.clear()
                    if limit is not None and summary.matched >= limit:
                        summary.limited = True
                        break
                if progress:
                    progress(summary.scanned, max(total, summary.scanned), summary.matched)
                if summary.limited:
                    break
        except IdleTimeout:
            summary.stopped_quiet = True
        if pending:
            await asyncio.gather(*pending)
    finally:
        await close_reader(consumer)
        if producer is not None:
            await stop_client(producer)     # its records acknowledged above
        if originals is not None:
            await originals.stop()
    return summary


async def _original(role: str, rec: Any, facts: Mapping[str, str | None], originals: _Originals | None,
                    summary: ReplaySummary) -> tuple[bytes | None, bytes, Headers] | None:
    """(key, value, headers) to produce for one matched record, or None (noted as missing)."""
    if role == "dlq":
        return rec.key, rec.value if rec.value is not None else b"", replay_headers(rec.headers, rec.topic,
                                                                                     rec.partition, rec.offset)
    assert originals is not None
    where = f"{rec.topic}:{rec.partition}:{rec.offset}"
    h = _headers(rec.headers)
    try:
        src_topic = h[topics.HEADER_SOURCE_TOPIC]
        src_partition = int(h[topics.HEADER_SOURCE_PARTITION])
        src_offset = int(h[topics.HEADER_SOURCE_OFFSET])
    except (KeyError, ValueError):
        summary.missing.append(f"{where}: no sms.source.* headers")
        return None
    original = await originals.get(src_topic, src_partition, src_offset)
    if original is None:
        summary.missing.append(f"{where}: {src_topic}:{src_partition}:{src_offset} is gone")
        return None
    cid = facts.get("client_message_id")
    found_cid = _json(original.value).get("client_message_id")
    if cid is not None and found_cid != cid:
        summary.missing.append(f"{where}: {src_topic}:{src_partition}:{src_offset} is message {found_cid!r}, "
                               f"not {cid!r}")
        return None
    return original.key, original.value if original.value is not None else b"", replay_headers(
        original.headers, rec.topic, rec.partition, rec.offset)


# --------------------------------------------------------------------------------------------
# Settings: only the kafka section matters here


def kafka_settings(config_file: str | None = None) -> KafkaSettings:
    """The Kafka settings, loaded and validated as the worker loads them (the whole configuration
    must be valid: run replay where the worker's configuration is, e.g. in its pod); without a
    config, a running ``dev``'s (connector.ops.devmanifest)."""
    from connector.config import load
    from connector.ops.devmanifest import dev_environment

    return load(config_file, under=dev_environment(config_file)).kafka


# --------------------------------------------------------------------------------------------
# The commands (registered in connector.cli: ``main.add_command(dlq_group)``)


@click.group("dlq")
def dlq_group() -> None:
    """Dead-lettered and failed outbound records: replay them to sms.outbound."""


@dlq_group.command("replay")
@click.option("--topic", required=True, metavar="TOPIC",
              help="sms.outbound.dlq or sms.outbound.failed (or: dlq, failed).")
@click.option("--filter", "filters", multiple=True, metavar="FIELD=VALUE[,VALUE]",
              help="Replay only matching records (repeatable; all must match). Fields: reason, provider, route, "
                   "client_message_id (or id), key. Example: --filter reason=invalid-record")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; produce nothing.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after N matching records.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="SMS_CONNECTOR_CONFIG",
              help="TOML config file (also SMS_CONNECTOR_CONFIG). Environment variables override it.")
def dlq_replay(topic: str, filters: tuple[str, ...], dry_run: bool, limit: int | None, config: str | None) -> None:
    """Produce the original records of matching dead-lettered / failed records to sms.outbound again.

    Original key, value (so the same client_message_id) and headers, plus sms.replayed-from =
    TOPIC:PARTITION:OFFSET. A failed result carries no text: its original is read back from
    sms.outbound (the sms.source.* headers); if it is gone the command says so and exits 1.
    Reads the whole topic without a consumer group and commits nothing: running it twice
    replays twice, so try --dry-run first.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        parsed = parse_filters(filters)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--filter") from None
    try:
        topic_role(topic)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--topic") from None
    try:
        kafka = kafka_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from connector.ops.check import quiet_client_logs
    from connector.ops.devmanifest import kafka_error, notice

    quiet_client_logs()
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("matched {task.fields[matched]}"), TimeElapsedColumn(), console=console,
                   transient=True, disable=not console.is_terminal)
    with bar:
        task = bar.add_task("scanning", total=None, matched=0)

        def on_progress(scanned: int, total: int, matched: int) -> None:
            bar.update(task, completed=scanned, total=total, matched=matched)

        try:
            summary = asyncio.run(replay(kafka, topic, parsed, dry_run=dry_run, limit=limit, progress=on_progress,
                                         notice=notice))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        except (KafkaError, OSError) as exc:
            raise kafka_error(exc) or click.ClickException(
                f"Kafka at {kafka.bootstrap_servers}: {type(exc).__name__}: {exc}. Check kafka.bootstrap_servers / "
                f"security settings (`sms-connector check --connect`)") from None
    for line in summary.lines():
        click.echo(line)
    if not summary.ok:
        sys.exit(1)
