"""``sms-connector status``: a live terminal view of a running deployment, from its metrics and topics.

Three layers, so the arithmetic is testable without a broker or a terminal:

- **Data, pure** (``connector.ops.snapshot``): one worker's ``/metrics`` text as a ``Snapshot``,
  several merged, two turned into rates; the dispatch group's lag from offsets.
- **Kafka** (``connector.ops.kafka_probe``): ``KafkaProbe`` reads offsets and committed offsets,
  joining no group and committing nothing.
- **View** (this module): ``render(snapshot, rates, kafka)`` builds one rich renderable;
  ``run_status`` polls every ``interval`` seconds and shows it under ``rich.live.Live`` on a
  terminal, or prints one plain snapshot per interval otherwise (``once``: a single snapshot,
  rates measured over one interval).

``StatusMonitor`` holds the clients and the previous sample between polls; ``LiveStatus`` is the
hook ``dev`` uses to show the same view while its demo runs (on a terminal only).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Sequence
from urllib.parse import urlsplit

import aiohttp
import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from connector import contract as topics
from connector.config import ConfigError, KafkaSettings, load
from connector.ops import devmanifest
from connector.ops import quiet_client_logs
from connector.ops.kafka_probe import TERMINAL_ROLES, KafkaProbe
from connector.ops.snapshot import (ACCEPTED, DEAD_LETTERED, FAILED, SCHEDULED_TOPIC, KafkaState, Rates, Snapshot,
                                    merge, parse_metrics, rates)

DEFAULT_MANIFEST = devmanifest.DEFAULT_PATH
DEFAULT_INTERVAL_S = 2.0
METRICS_TIMEOUT_S = 5.0
CIRCUIT_NAMES = {0: "closed", 1: "half-open", 2: "open"}


# ------------------------------------------------------------------------------------------------
# Polling


def metrics_url(url: str) -> str:
    """``http://host:8080`` and ``host:8080`` mean ``http://host:8080/metrics``."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        url = url.rstrip("/") + "/metrics"
    return url


@dataclass(frozen=True)
class StatusSample:
    snapshot: Snapshot
    rates: Rates | None
    kafka: KafkaState | None
    at: float                     # wall-clock time of the sample


class StatusMonitor:
    """Polls metrics URLs and Kafka, keeps the previous snapshot for rates. Use as ``async with``."""

    def __init__(self, metrics_urls: Sequence[str], kafka: KafkaSettings | None, *, dev_broker: bool | None = None,
                 group: str | None = None, timeout: float = METRICS_TIMEOUT_S) -> None:
        self.urls = [metrics_url(u) for u in metrics_urls]
        self.probe = KafkaProbe(kafka, group=group, dev_broker=dev_broker) if kafka is not None else None
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._prev: tuple[float, Snapshot] | None = None
        self.last: StatusSample | None = None

    async def __aenter__(self) -> StatusMonitor:
        quiet_client_logs()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self.probe is not None:
            await self.probe.close()

    async def _scrape(self, url: str) -> Snapshot:
        assert self._session is not None, "use StatusMonitor as `async with`"
        try:
            async with self._session.get(url) as r:
                if r.status != 200:
                    return Snapshot(errors=[f"{url}: HTTP {r.status}"])
                text = await r.text()
            return parse_metrics(text)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            what = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.TimeoutError):
                what = f"no answer within {self.timeout:.0f}s"
            return Snapshot(errors=[f"{url}: {what}"])

    async def poll(self) -> StatusSample:
        kafka_task = asyncio.ensure_future(self.probe.sample()) if self.probe is not None else None
        snaps = await asyncio.gather(*(self._scrape(u) for u in self.urls))
        now = time.monotonic()
        snap = merge(snaps)
        kafka = await kafka_task if kafka_task is not None else None
        r = None
        # Rates only between samples from the same set of workers (one dropping out is no throughput).
        if self._prev is not None and now > self._prev[0] and snap.workers == self._prev[1].workers and snap.workers:
            r = rates(self._prev[1], snap, now - self._prev[0])
        if snap.workers or self._prev is None:
            self._prev = (now, snap)
        self.last = StatusSample(snap, r, kafka, time.time())
        return self.last

    def view(self, *, title: str | None = None, note: str | None = None) -> RenderableType:
        if self.last is None:
            return Text("sms-connector status: waiting for the first sample")
        s = self.last
        return render(s.snapshot, s.rates, s.kafka, title=title, note=note, at=s.at,
                      sources=len(self.urls))


async def status_panel(monitor: StatusMonitor, *, note: str | None = None) -> RenderableType:
    """Poll once and return the view (for a caller that owns its own ``Live`` or console)."""
    await monitor.poll()
    return monitor.view(note=note)


# ------------------------------------------------------------------------------------------------
# View


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}/s"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:,.1f} s"


def _bound(le: float | None) -> str:
    # Buckets are coarse (1 s, 2 s, 5 s, ...): say which bucket, not an interpolated guess.
    if le is None:
        return "-"
    return "> last bucket" if le == float("inf") else f"<= {_secs(le)}"


def _kv_table(title: str) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_header=True, pad_edge=False)
    return t


def render(snapshot: Snapshot, rates: Rates | None, kafka: KafkaState | None, *, title: str | None = None,
           note: str | None = None, at: float | None = None, sources: int | None = None) -> RenderableType:
    """The status view: a rich renderable (print it, or give it to ``Live``)."""
    s, r = snapshot, rates
    parts: list[RenderableType] = []

    # -- header
    when = datetime.fromtimestamp(at if at is not None else time.time()).strftime("%H:%M:%S")
    n_sources = sources if sources is not None else s.workers + len(s.errors)
    head = Text()
    head.append(title or "sms-connector status", style="bold")
    head.append(f"   {when}   ")
    if n_sources:
        head.append(f"metrics from {s.workers}/{n_sources} worker(s)",
                    style="green" if s.workers == n_sources else "bold red")
    else:
        head.append("no metrics URL (Kafka only)", style="yellow")
    if r is not None:
        head.append(f"   rates over {r.dt:.1f}s")
    parts.append(head)
    if note:
        parts.append(Text(note))
    for err in s.errors:
        parts.append(Text(f"unreachable  {err}", style="red"))

    # -- throughput and pipeline, side by side
    thr = _kv_table("Throughput")
    thr.add_column("records")
    thr.add_column("total", justify="right")
    thr.add_column("rate", justify="right")
    for label, total, rate in (("consumed", s.consumed, r and r.consumed), ("accepted", s.accepted_total, r and r.accepted),
                               ("failed", s.failed_total, r and r.failed),
                               ("dead-lettered", s.dead_lettered_total, r and r.dead_lettered)):
        thr.add_row(label, _n(total), _rate(rate) if r is not None else "-")

    pipe = _kv_table("Pipeline")
    pipe.add_column("")
    pipe.add_column("now", justify="right")
    pipe.add_row("in flight", _n(s.in_flight))
    pipe.add_row("waiting to retry", _n(s.retry_waiting))
    scheduled = [lag for lag in kafka.lag if lag.topic == SCHEDULED_TOPIC] if kafka is not None else []
    scheduled_lag = sum(lag.lag for lag in scheduled)
    if s.deferred or s.deferred_waiting or scheduled_lag:   # scheduled sends and quiet hours
        # those read from the scheduled topic are in its lag too (not committed until forwarded)
        held = s.deferred_waiting - s.deferred_waiting_scheduled if scheduled else s.deferred_waiting
        pipe.add_row("waiting for send time", _n(held + scheduled_lag))
        pipe.add_row("deferred", ", ".join(f"{reason} {_n(v)}" for reason, v in sorted(s.deferred.items())) or "0")
    pipe.add_row("oldest pending", _secs(s.oldest_pending_s))
    parts_total = None
    if kafka is not None and kafka.lag:
        parts_total = len(kafka.lag[0].partitions)
    pipe.add_row("partitions assigned", _n(s.partitions_assigned) + (f"/{parts_total}" if parts_total else ""))
    pipe.add_row("provider retries", _n(s.retries_total))
    cb_ok = sum(v for (_, outcome), v in s.callbacks.items() if outcome == "ok")
    pipe.add_row("callbacks (ok)", f"{_n(s.callbacks_total)} ({_n(cb_ok)})")
    pipe.add_row("MO received", _n(s.mo_total))
    pipe.add_row("opt-out suppressed", _n(s.optout_total))
    not_closed = {route: v for route, v in s.circuits.items() if v}
    if not_closed:
        pipe.add_row(Text("circuits", style="bold red"),
                     Text(", ".join(f"{rt} {CIRCUIT_NAMES.get(int(v), v)}" for rt, v in sorted(not_closed.items())),
                          style="bold red"))
    for route, rate in sorted(s.rate_limit.items()):     # routes with a rate limit (0: unlimited)
        if rate:
            pipe.add_row(f"rate limit {route}", f"{rate:,.4g}/s")
    for (route, scope, window), budget in sorted(s.budget_limit.items()):
        spent = s.budget_spent.get((route, scope, window), 0.0)
        share = spent / budget if budget else 0.0
        pipe.add_row(f"budget {route}{' ' + scope if scope else ''} per {window}",
                     Text(f"{_n(spent)}/{_n(budget)} ({100 * share:.0f}%)",
                          style="bold red" if share >= 1 else "yellow" if share >= 0.8 else ""))
    grid = Table.grid(padding=(0, 4))
    grid.add_row(thr, pipe)
    parts.append(grid)

    # -- outcomes
    out = Table(title="Outcomes by provider and reason", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    out.add_column("outcome")
    out.add_column("provider")
    out.add_column("reason")
    out.add_column("total", justify="right")
    out.add_column("rate", justify="right")
    out.add_column("share", justify="right")
    outcomes = s.outcomes()
    terminal = s.terminal_total
    style = {ACCEPTED: "green", FAILED: "yellow", DEAD_LETTERED: "red"}
    order = {ACCEPTED: 0, FAILED: 1, DEAD_LETTERED: 2}
    for (outcome, provider, reason), n in sorted(outcomes.items(), key=lambda kv: (order[kv[0][0]], -kv[1], kv[0])):
        rate = r.outcomes.get((outcome, provider, reason)) if r is not None else None
        out.add_row(Text(outcome, style=style[outcome]), Text(provider or "-"), Text(reason or "-"), _n(n),
                    _rate(rate), f"{100 * n / terminal:.1f}%" if terminal else "-")
    if not outcomes:
        out.add_row(Text("none yet", style="dim"), "", "", "", "", "")
    parts.append(out)

    # -- Kafka
    if kafka is not None:
        parts.append(_render_kafka(kafka, s))

    # -- delivery latency
    if s.delivery_latency:
        dl = Table(title="Delivery latency (submit to final status)", title_justify="left", box=box.SIMPLE_HEAD,
                   pad_edge=False)
        for col, just in (("provider", "left"), ("state", "left"), ("count", "right"), ("mean", "right"),
                          ("p50", "right"), ("p95", "right")):
            dl.add_column(col, justify=just)  # type: ignore[arg-type]
        for (provider, state), h in sorted(s.delivery_latency.items()):
            dl.add_row(Text(provider or "-"), Text(state or "-"), _n(h.count),
                       _secs(h.sum / h.count) if h.count else "-", _bound(h.upper_bound(0.5)),
                       _bound(h.upper_bound(0.95)))
        parts.append(dl)
    return Group(*parts)


def _render_kafka(k: KafkaState, s: Snapshot) -> RenderableType:
    if k.error:
        return Panel(Text(f"Kafka {k.bootstrap_servers}: {k.error}", style="red"), title="Consumer lag",
                     title_align="left", box=box.ROUNDED)
    approx = " (approx.)" if k.approx else ""
    t = Table(title=f"Consumer lag{approx}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              caption=k.source, caption_justify="left")
    t.add_column("topic")
    t.add_column("group")
    t.add_column("partitions", justify="right")
    t.add_column("end", justify="right")
    t.add_column("committed", justify="right")
    t.add_column("lag", justify="right")
    t.add_column("max/partition", justify="right")
    for lag in k.lag:
        t.add_row(Text(lag.topic), Text(lag.group), str(len(lag.partitions)), _n(lag.end), _n(lag.committed),
                  Text(("~" if k.approx else "") + _n(lag.lag), style="bold" if lag.lag else "green"), _n(lag.max_lag))
    lines = [t]
    names = {topics.spec(r).name: r for r in TERMINAL_ROLES}
    on_topics = ", ".join(f"{names.get(n, n)} {_n(c)}" for n, c in k.terminal.items())
    committed = sum(lag.committed for lag in k.lag if lag.topic != SCHEDULED_TOPIC)
    what = ("terminal record offsets on topics (at most: transaction markers and aborted records take "
            "offsets too)" if k.markers else "terminal records on topics")
    check = Text(f"{what}: {on_topics} = {_n(k.terminal_total)}; "
                 f"committed input {_n(committed)}; workers' metrics {_n(s.terminal_total)}", style="dim")
    lines.append(check)
    return Group(*lines)


# ------------------------------------------------------------------------------------------------
# Running


def _is_tty(out: IO[str]) -> bool:
    return bool(getattr(out, "isatty", None) and out.isatty())


def _console(out: IO[str], tty: bool, width: int | None = None) -> Console:
    if tty:
        return Console(file=out, highlight=False)
    # Plain: no colour, no cursor control; wide enough that the tables do not wrap in a log.
    return Console(file=out, force_terminal=False, color_system=None, highlight=False, width=width or 120,
                   soft_wrap=False)


async def run_status(metrics_urls: list[str], kafka: KafkaSettings | None, interval: float, once: bool,
                     out: IO[str], *, dev_broker: bool | None = None, group: str | None = None,
                     width: int | None = None) -> int:
    """Poll every ``interval`` seconds until cancelled. On a TTY the view refreshes in place
    (``rich.live.Live``); otherwise one plain snapshot is printed per interval. ``once``: sample,
    wait ``interval`` (for the rates), sample again, print one snapshot and return.

    Returns 0, or 1 when ``once`` and nothing answered (no metrics source and no Kafka)."""
    tty = _is_tty(out) and not once
    console = _console(out, tty, width)
    async with StatusMonitor(metrics_urls, kafka, dev_broker=dev_broker, group=group) as monitor:
        if once:
            await monitor.poll()
            if interval > 0:
                await asyncio.sleep(interval)
            sample = await monitor.poll()
            console.print(monitor.view())
            kafka_ok = sample.kafka is not None and sample.kafka.error is None
            return 0 if sample.snapshot.workers or kafka_ok else 1
        if tty:
            with Live(Text("sms-connector status: first sample..."), console=console, auto_refresh=False,
                      redirect_stdout=False, redirect_stderr=False) as live:
                while True:
                    t0 = time.monotonic()
                    await monitor.poll()
                    live.update(monitor.view(), refresh=True)
                    await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
        while True:
            t0 = time.monotonic()
            await monitor.poll()
            console.print(monitor.view())
            console.print()
            out.flush()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))


class LiveStatus:
    """The status view inside another command's loop (``dev``). On a terminal it shows the view under
    ``rich.live.Live`` and refreshes it on ``tick()`` (polling at most every ``interval`` seconds);
    ``say()`` prints a line above it. Not on a terminal it does nothing: the caller keeps printing
    its plain lines (tests and CI read those)::

        async with LiveStatus([metrics_url], kafka, out, dev_broker=True) as status:
            while ...:
                if not status.active:
                    say("progress ...")
                await status.tick(note="demo 500/1000 terminal")
    """

    def __init__(self, metrics_urls: Sequence[str], kafka: KafkaSettings | None, out: IO[str], *,
                 interval: float = 1.0, dev_broker: bool | None = None, enabled: bool | None = None) -> None:
        self.active = _is_tty(out) if enabled is None else enabled
        self.interval = interval
        self.console = _console(out, self.active)
        self.monitor = StatusMonitor(metrics_urls, kafka, dev_broker=dev_broker)
        self._live: Live | None = None
        self._last_poll = 0.0

    async def __aenter__(self) -> LiveStatus:
        if self.active:
            await self.monitor.__aenter__()
            self._live = Live(Text("status: first sample..."), console=self.console, auto_refresh=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.active:
            await self.monitor.__aexit__(*exc)

    def say(self, text: str) -> None:
        """A line above the live view (or nothing when inactive: the caller prints its own)."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)

    async def tick(self, *, note: str | None = None, force: bool = False) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if force or now - self._last_poll >= self.interval or self.monitor.last is None:
            self._last_poll = now
            await self.monitor.poll()
        self._live.update(self.monitor.view(note=note), refresh=True)


# ------------------------------------------------------------------------------------------------
# The command (registered in connector.cli: ``main.add_command(status_command)``)


def resolve_sources(metrics_urls: Sequence[str], config: str | None, manifest: str
                    ) -> tuple[list[str], KafkaSettings, bool | None, str]:
    """(metrics URLs, Kafka settings, dev broker?, where they came from). With no URL the dev
    manifest is used when it exists (its bootstrap servers and metrics URL); else the config."""
    if not metrics_urls:
        m = devmanifest.read(manifest)
        if m is not None:
            if not m.get("bootstrap_servers") or not m.get("metrics_url"):
                raise click.ClickException(f"{manifest}: no bootstrap_servers / metrics_url in the dev manifest")
            kafka = KafkaSettings(bootstrap_servers=str(m["bootstrap_servers"]), idempotent_producer=False,
                                  replication_factor=1)
            return [str(m["metrics_url"])], kafka, True, f"dev manifest {manifest}"
    try:
        settings = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return list(metrics_urls), settings.kafka, None, f"config {config}" if config else "environment / defaults"


@click.command("status")
@click.option("--metrics-url", "metrics_urls", multiple=True, metavar="URL",
              help="A worker's metrics URL (repeatable; several workers are summed). "
                   "Default: the dev manifest's.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="SMS_CONNECTOR_CONFIG",
              help="TOML config file (also SMS_CONNECTOR_CONFIG) for Kafka (kafka.*). Environment variables "
                   "override it. Not used when the dev manifest is.")
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True, type=click.Path(dir_okay=False),
              help="The dev manifest, used when no --metrics-url is given and it exists.")
@click.option("--interval", type=click.FloatRange(0, 3600), default=DEFAULT_INTERVAL_S, show_default=True,
              help="Seconds between samples (rates are measured over it).")
@click.option("--once", is_flag=True, help="Print one snapshot (two samples --interval apart, for the rates) and exit.")
def status_command(metrics_urls: tuple[str, ...], config: str | None, manifest: str, interval: float,
                   once: bool) -> None:
    """Live view of a running deployment: throughput, outcomes by provider and reason, consumer lag,
    in flight, oldest pending, callbacks and MO.

    \b
    Sources:  each --metrics-url (summed), and Kafka for the dispatch group's lag on sms.outbound
              and the terminal records on accepted / failed / dlq (nothing is committed).
    Default:  with no --metrics-url, .sms-connector-dev.json of a running `sms-connector dev`;
              else Kafka from --config / SMS_CONNECTOR_KAFKA__*.

    On a terminal the view refreshes in place (Ctrl-C stops); otherwise one plain snapshot per
    interval. Lag on the dev broker is approximate (its ListOffsets is low; see the caption).
    """
    urls, kafka, dev_broker, _ = resolve_sources(metrics_urls, config, manifest)
    if not once and interval <= 0:
        raise click.UsageError("--interval must be > 0 without --once")
    try:
        code = asyncio.run(run_status(urls, kafka, interval, once, sys.stdout,
                                      dev_broker=dev_broker))
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


__all__ = ["Hist", "KafkaProbe", "KafkaState", "LiveStatus", "PartitionLag", "Rates", "Snapshot", "StatusMonitor",
           "StatusSample", "TopicLag", "consumer_lag", "merge", "metrics_url", "parse_metrics", "rates", "render",
           "resolve_sources", "run_status", "status_command", "status_panel"]
