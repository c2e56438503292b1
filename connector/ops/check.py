"""``sms-connector check [--config FILE] [--connect]``: is this configuration ready to run?

Without ``--connect`` nothing leaves the machine: the configuration is loaded exactly as the
worker loads it (``config.load``: types, ranges, choices, routes, routing rules, every referenced
secret resolved) and each problem becomes a failed row that says what to fix. A few things the
worker accepts but that are probably not meant (a ``batch_max`` above what the provider takes,
``segment_policy = split`` on a provider that cannot split, destination rules that contradict
each other or block every number a prefix rule sends to the route, ...) are warnings. The effective
settings follow, with where each comes from (default, file, env) and secrets redacted.

``--connect`` also reaches out, with a short timeout per step, and never sends a message:

- Kafka: ``kafka.check_topics`` with the configured security settings: bootstrap and metadata
  requests to ``kafka.bootstrap_servers``, then every topic of the contract must exist with at
  least its partition count. Bounded by ``--timeout``; a failure to connect (refused, TLS, SASL,
  no answer in time) is "broker unreachable". (Kafka clients are only used through
  ``connector.kafka`` here, as the module boundaries want.)
- Transactions, with ``kafka.exactly_once`` (#16): a probe transactional id
  (``<prefix>-<group_id>-probe``) is initialised and one empty transaction committed, as the
  worker does at start. Refused (TRANSACTIONAL_ID_AUTHORIZATION_FAILED): a failed row naming
  the ACL to grant; no transaction within ``--timeout`` (a broker without them, such as Tansu):
  a warning, the worker will run at-least-once.
- Each route authenticates, nothing else:

  * providers with a login (ThingSpace: OAuth token + M2M session; Rev.io: ``Sessions_Create``)
    run their login requests (``Auth.login_requests`` / ``handle_login``) through the route's own
    transport. A Rev.io route with ``use_sessions = false`` still gets one ``Sessions_Create``:
    it only checks the credentials. One login attempt per run: ThingSpace locks an account after
    five refused logins, so fix a refused password before running ``check`` again.
  * SMPP REST (a static bearer key; the API has no read endpoint): an **empty** ``Messages[]``
    batch is POSTed. It sends nothing. The gateway authenticates before it validates (ServiceStack
    runs its authentication filter before validation; assumed for the real gateway, true of the
    simulator), so 400 (``'Messages' must not be empty``) means the key was accepted, 401/403
    that it was refused. A 200 (a gateway that accepts an empty batch) is also a pass.
  * Ogangi (a signature per call): ``getMOMessages`` page 1 with one result, a signed read-only
    call. ``OK`` means key, signature form and instance id are right; ``BAD_SIGNATURE`` that the
    private or public key (or ``signature_encoding`` / ``signature_covers``) is wrong.
  * any other provider whose credentials are static: "not checkable without sending" (skipped).

The exit status is 1 when any row failed (warnings and skips do not fail), else 0.
"""

from __future__ import annotations

import asyncio
import enum
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Mapping

import click

from connector import contract as topics
from connector.config import ENV_PREFIX, Problem, Settings, load_detailed, redacted
from connector.destinations import conflicts
from connector.ops import quiet_client_logs
from connector.policy import handoff_policy, longest_schedule_s
from connector.schedule import known_zone, parse_quiet_hours

__all__ = ["CheckReport", "CheckRow", "Status", "check_command", "config_rows", "problem_row", "render",
           "run_check"]

DEFAULT_TIMEOUT_S = 5.0


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckRow:
    area: str          # "config", "kafka", "topics", "route <name>"
    item: str          # the setting path, "broker", a topic name, "credentials", ...
    status: Status
    detail: str        # what was found; for a failure, what to fix

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


@dataclass
class CheckReport:
    rows: list[CheckRow] = field(default_factory=list)
    settings: dict[str, Any] | None = None               # redacted; None when the config is invalid
    sources: dict[str, str] = field(default_factory=dict)  # setting path -> default | file | manifest | env
    config_file: str | None = None
    connected: bool = False

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.rows if r.failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def count(self, status: Status) -> int:
        return sum(1 for r in self.rows if r.status is status)

    def settings_rows(self) -> list[tuple[str, str, str]]:
        """(path, value, source) for every effective setting; routes as ``routes.<name>.<field>``."""
        if self.settings is None:
            return []
        out: list[tuple[str, str, str]] = []
        for section, values in self.settings.items():
            if section == "routes":
                for name, route in values.items():
                    merged = {**route["common"], **(route["provider"] or {})}
                    for key, value in merged.items():
                        path = f"routes.{name}.{key}"
                        out.append((path, _show(value), self.sources.get(path, "default")))
                continue
            for key, value in values.items():
                path = f"{section}.{key}"
                out.append((path, _show(value), self.sources.get(path, "default")))
        return out


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------
# Configuration problems -> rows that say what to fix


def problem_row(problem: Problem) -> CheckRow:
    """One configuration problem as a failed row that says what to fix."""
    return CheckRow("config", problem.path, Status.FAIL, f"{problem.message.rstrip('.')}. Fix: {problem.fix}")


def config_rows(settings: Settings) -> list[CheckRow]:
    """Rows for a configuration ``config.load`` accepted: one per route, plus warnings for what
    the worker accepts but is probably not meant."""
    from connector.providers import REGISTRY

    rows: list[CheckRow] = [CheckRow("config", "settings", Status.OK,
                                     f"valid: {len(settings.routes)} route(s)")]
    if not settings.routes:
        rows.append(CheckRow("config", "routes", Status.FAIL,
                             "no routes configured: the worker refuses to dispatch. Fix: add a [routes.NAME] "
                             "section with a provider and its credentials (see `sms-connector worker --help`)"))
    elif len(settings.routes) > 1 and not settings.routing.default_route:
        rows.append(CheckRow("config", "routing.default_route", Status.WARN,
                             f"empty with {len(settings.routes)} routes: records that name no route and match "
                             f"no rule fail with reason invalid. Fix: set routing.default_route"))
    d = settings.dispatch
    handoff = handoff_policy(d)
    if handoff is not None and d.idempotency_window_s > 0:
        longest = longest_schedule_s(handoff, d.retry_max_attempts)
        if longest > d.idempotency_window_s:
            rows.append(CheckRow("config", "dispatch.idempotency_window_s", Status.WARN,
                                 f"{d.idempotency_window_s:g} s, but a message may wait up to {longest:g} s in the "
                                 f"retry topic: a crash late in its schedule may send it again. Fix: raise "
                                 f"dispatch.idempotency_window_s or shorten the schedule (dispatch.max_attempts, "
                                 f"retry_topic_delay_s, retry_topic_max_delay_s)"))
    for name, route in settings.routes.items():
        c = route.common
        provider = REGISTRY[c.provider]
        rows.append(CheckRow(f"route {name}", "config", Status.OK,
                             f"provider {c.provider}, base_url {getattr(route.provider, 'base_url', '')}, "
                             f"concurrency {c.concurrency}, batch_max {c.batch_max}"))
        if c.batch_max > provider.max_batch:
            rows.append(CheckRow(f"route {name}", f"routes.{name}.batch_max", Status.WARN,
                                 f"{c.batch_max} but {provider.title} takes at most {provider.max_batch} "
                                 f"message(s) per request: {provider.max_batch} is used. "
                                 f"Fix: set routes.{name}.batch_max to at most {provider.max_batch}"))
        if c.concurrency > settings.http.provider_max_connections:
            rows.append(CheckRow(f"route {name}", f"routes.{name}.concurrency", Status.WARN,
                                 f"{c.concurrency} calls in flight but http.provider_max_connections is "
                                 f"{settings.http.provider_max_connections}: calls beyond it wait for a "
                                 f"connection. Fix: lower one or raise the other"))
        for path, what, fix in conflicts(name, c, settings.routing):
            rows.append(CheckRow(f"route {name}", path, Status.WARN, f"{what}. Fix: {fix}"))
        if c.segment_policy == "split" and not provider.can_split:
            rows.append(CheckRow(f"route {name}", f"routes.{name}.segment_policy", Status.WARN,
                                 f"split, but {provider.title} cannot split: every multi-segment message "
                                 f"fails as invalid. Fix: use whole or reject"))
        rows += budget_rows(name, c, handoff is not None, d.idempotency_window_s)
    rows += schedule_rows(settings)
    return rows


def schedule_rows(settings: Settings) -> list[CheckRow]:
    """Warnings for quiet hours that cannot do what they seem to (connector.schedule)."""
    rows: list[CheckRow] = []
    if any(route.common.quiet_hours for route in settings.routes.values()) and not known_zone("America/New_York"):
        rows.append(CheckRow("config", "quiet_hours", Status.FAIL,
                             "no time zone database (zoneinfo finds neither the system's nor the tzdata "
                             "package's): quiet hours would hold nothing. Fix: install tzdata (pip or the OS)"))
    for name, route in settings.routes.items():
        quiet, path = parse_quiet_hours(route.common.quiet_hours), f"routes.{name}.quiet_hours"
        if quiet is None:
            continue
        if quiet.empty:
            rows.append(CheckRow(f"route {name}", path, Status.WARN,
                                 f"{quiet}: starts when it ends, so it holds nothing. Fix: give it a length, "
                                 f"or leave it empty"))
        elif quiet.length_s > 20 * 3600:
            rows.append(CheckRow(f"route {name}", path, Status.WARN,
                                 f"{quiet}: {quiet.length_s / 3600:g} quiet hours a day leave "
                                 f"{24 - quiet.length_s / 3600:g} to send in, less in regions with several "
                                 f"zones: messages wait up to a day and a burst goes out at once. Fix: check "
                                 f"start and end are not swapped"))
        ahead = settings.dispatch.max_schedule_ahead_s
        if not quiet.empty and quiet.length_s > ahead:
            rows.append(CheckRow(f"route {name}", path, Status.WARN,
                                 f"{quiet}: a message due as they start waits {quiet.length_s / 3600:g} h, longer "
                                 f"than dispatch.max_schedule_ahead_s ({ahead:g} s): it fails, reason invalid, "
                                 f"instead of waiting. Fix: raise dispatch.max_schedule_ahead_s above "
                                 f"{quiet.length_s:g} s or shorten the quiet hours"))
        if name == settings.routing.device_route:
            rows.append(CheckRow(f"route {name}", path, Status.WARN,
                                 f"{quiet} on the device route: a device id has no number to take a time zone "
                                 f"from, so only records naming recipient_time_zone are held. Fix: have "
                                 f"producers set recipient_time_zone"))
        failover = route.common.failover_route
        if failover and failover in settings.routes and \
                parse_quiet_hours(settings.routes[failover].common.quiet_hours) != quiet:
            rows.append(CheckRow(f"route {name}", path, Status.WARN,
                                 f"{quiet}, but its failover route {failover} has "
                                 f"{settings.routes[failover].common.quiet_hours or 'none'}: a message keeps the "
                                 f"quiet hours of the route it was routed to. Fix: give both the same"))
    return rows


def budget_rows(name: str, c: Any, retry_topic: bool, idempotency_window_s: float) -> list[CheckRow]:
    """Warnings for a route's spend budgets (connector.budget) that are probably not meant."""
    from connector.config import parse_region_budgets

    rows: list[CheckRow] = []
    area = f"route {name}"
    hour, day = c.budget_segments_per_hour, c.budget_segments_per_day
    try:
        budgets = [("", hour, day), *((r, h, d) for r, (h, d) in parse_region_budgets(c.budget_regions).items())]
    except ValueError:
        return rows      # a configuration problem, reported by the loader
    for region, per_hour, per_day in budgets:
        what = f"region {region}'s budget" if region else "budget"
        path = f"routes.{name}.budget_regions" if region else f"routes.{name}.budget_segments_per_day"
        if per_hour and per_day and per_day < per_hour:
            rows.append(CheckRow(area, path, Status.WARN,
                                 f"daily {what} ({per_day}) below the hourly one ({per_hour}): the hourly one can "
                                 f"never be reached. Fix: raise the daily budget or drop the hourly one"))
    if c.rate_limit and (hour or day):
        for label, budget, span in (("hourly", hour, 3600), ("daily", day, 86400)):
            if budget and budget / c.rate_limit < span / 6:
                minutes = budget / c.rate_limit / 60
                rows.append(CheckRow(area, f"routes.{name}.rate_limit", Status.WARN,
                                     f"at its rate limit ({c.rate_limit:g}/s) the route spends its {label} budget "
                                     f"({budget}) in {minutes:.1f} minutes, then {'holds' if c.over_budget == 'hold' else 'fails'} "
                                     f"every message for the rest of the window. Fix: if a burst is not meant to "
                                     f"take the whole budget, lower rate_limit"))
    if (hour or day or c.budget_regions) and c.over_budget == "hold":
        longest = 86400 if any(per_day for _, _, per_day in budgets) else 3600
        if not retry_topic:
            rows.append(CheckRow(area, f"routes.{name}.over_budget", Status.WARN,
                                 "hold without a retry topic (dispatch.max_attempts = retry_max_attempts): held "
                                 "messages wait in place, holding dispatch.max_in_flight places and their "
                                 "partition's commit until the window ends. Fix: enable the retry topic or use fail"))
        elif idempotency_window_s and idempotency_window_s < longest:
            rows.append(CheckRow(area, "dispatch.idempotency_window_s", Status.WARN,
                                 f"{idempotency_window_s:g} s, but a message held over budget may wait up to "
                                 f"{longest} s in the retry topic: a crash late in the wait may send a duplicate "
                                 f"of it. Fix: raise dispatch.idempotency_window_s to {longest}"))
    return rows


# --------------------------------------------------------------------------------------------
# Reaching out (--connect)


def _err(exc: BaseException) -> str:
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


async def check_kafka(settings: Settings, timeout: float) -> list[CheckRow]:
    """Reach the brokers (bootstrap + metadata) and check the topics of the contract
    (``kafka.check_topics``), all within ``timeout``."""
    from connector.kafka import access_problem, check_topics

    k = settings.kafka
    where = k.bootstrap_servers
    fix = ("check kafka.bootstrap_servers / security settings (kafka.security_protocol, sasl_*, ssl_*) and that "
           "the brokers are reachable from here")
    try:
        states = await asyncio.wait_for(check_topics(k), timeout)
    except asyncio.TimeoutError:
        return [CheckRow("kafka", "broker", Status.FAIL,
                         f"broker unreachable at {where}: no answer within {timeout:g}s. Fix: {fix}")]
    except Exception as exc:  # noqa: BLE001 - connection, SASL, TLS, authorization: report, never a traceback
        refused = await access_problem(k, timeout)   # the clients only say "unable to bootstrap": why?
        if refused is not None:
            return [CheckRow("kafka", "broker", Status.FAIL, str(refused))]
        return [CheckRow("kafka", "broker", Status.FAIL, f"broker unreachable at {where}: {_err(exc)}. Fix: {fix}")]
    rows = [CheckRow("kafka", "broker", Status.OK, f"reachable at {where} (metadata answered)")]
    bad = [s for s in states if not s.ok]
    for s in bad:
        if not s.authorized:
            rows.append(CheckRow("topics", s.name, Status.FAIL,
                                 f"not authorized to Describe it (TOPIC_AUTHORIZATION_FAILED) as "
                                 f"'{k.sasl_username or 'this client'}'. Fix: grant the connector's user the ACLs of the "
                                 f"chart's KafkaUser on {s.name} (Describe, Read{', Write' if topics.spec(s.role).direction != 'input' else ''})"))
            continue
        what = "missing" if not s.exists else f"{s.partitions} partitions, the contract says {s.expected_partitions}"
        rows.append(CheckRow("topics", s.name, Status.FAIL,
                             f"{what}. Fix: run `sms-connector topics apply` (or create it with at least "
                             f"{s.expected_partitions} partitions)"))
    if not bad:
        rows.append(CheckRow("topics", "contract", Status.OK,
                             f"all {len(states)} topics exist with their partition counts"))
    if settings.kafka.exactly_once:     # off: nothing to check (the effective settings say so)
        rows.append(await check_transactions(settings, timeout))
    return rows


async def check_transactions(settings: Settings, timeout: float) -> CheckRow:
    """With ``kafka.exactly_once``: the brokers run transactions and this principal may use its
    transactional ids (a probe id initialised, one empty transaction committed, as the worker
    does at start)."""
    from aiokafka.errors import TransactionalIdAuthorizationFailed

    from connector.kafka import transactional_acl_problem
    from connector.streams.transactions import broker_supports_transactions

    k = settings.kafka
    try:
        supported = await broker_supports_transactions(k, timeout)
    except TransactionalIdAuthorizationFailed:
        return CheckRow("kafka", "transactions", Status.FAIL, transactional_acl_problem(k))
    if not supported:
        return CheckRow("kafka", "transactions", Status.WARN,
                        f"the brokers did not run a transaction within {timeout:g}s (no transactions, as the embedded "
                        f"dev broker Tansu): the worker will run at-least-once. Fix: Apache Kafka brokers with "
                        f"transactions, or set kafka.exactly_once=false to say at-least-once is meant")
    return CheckRow("kafka", "transactions", Status.OK,
                    f"an empty transaction committed as '{k.transactional_id_prefix}-...': exactly-once is available")


async def check_route(name: str, sender: Any, timeout: float) -> CheckRow:
    """Authenticate through one route without sending anything (module docstring)."""
    from connector.errors import AuthFailed, ProviderError, Retriable

    area = f"route {name}"
    provider = sender.provider
    creds = provider.credentials_hint(name)
    base_url = getattr(provider.config, "base_url", "")
    try:
        return await asyncio.wait_for(_authenticate(area, sender), timeout)
    except asyncio.TimeoutError:
        return CheckRow(area, "credentials", Status.FAIL,
                        f"{base_url} did not answer within {timeout:g}s. Fix: check routes.{name}.base_url and "
                        f"that the provider is reachable from here")
    except AuthFailed as exc:
        extra = f" {provider.auth_refused_note}" if provider.auth_refused_note else ""
        return CheckRow(area, "credentials", Status.FAIL,
                        f"credentials refused: {exc.message.rstrip('.')}. Fix: check {creds}.{extra}".rstrip("."))
    except Retriable as exc:
        return CheckRow(area, "credentials", Status.FAIL,
                        f"cannot reach the provider: {exc.message.rstrip('.')}. Fix: check routes.{name}.base_url "
                        f"({base_url}) and the network path; try again if the provider is overloaded")
    except ProviderError as exc:
        return CheckRow(area, "credentials", Status.FAIL,
                        f"the provider refused the check call: {exc.message.rstrip('.')}. "
                        f"Fix: check routes.{name}.base_url and {creds}")
    except Exception as exc:  # noqa: BLE001 - one route's surprise must not hide the others' results
        return CheckRow(area, "credentials", Status.FAIL,
                        f"the check itself failed: {_err(exc)}. Fix: check routes.{name}.* against "
                        f"`sms-connector worker --help`")


async def _authenticate(area: str, sender: Any) -> CheckRow:
    from connector.providers import Capability, has

    provider = sender.provider
    auth = provider.auth
    transport = sender.transport
    request = provider.build_check() if has(provider, Capability.CONNECTION_CHECK) else None
    if request is not None:
        proven = provider.parse_check(await transport.send(request))
        return CheckRow(area, "credentials", Status.OK, proven)
    if not auth.ready:
        steps = 0
        for request in auth.login_requests():
            response = await transport.send(request)
            auth.handle_login(request, response)
            steps += 1
        fallback = getattr(auth, "fallback_reason", None)
        if fallback:
            return CheckRow(area, "credentials", Status.WARN,
                            f"no session could be had ({fallback}): credentials go in each request and cannot be "
                            f"checked without sending")
        if not auth.ready:
            return CheckRow(area, "credentials", Status.FAIL,
                            "the login finished without a usable session. Fix: check the credentials")
        what = provider.login_summary or f"{steps} login request(s) accepted"
        return CheckRow(area, "credentials", Status.OK, f"logged in: {what} (nothing sent)")
    return CheckRow(area, "credentials", Status.SKIP,
                    f"{provider.title} uses static credentials and has no read-only call: not checkable "
                    f"without sending")


async def check_routes(settings: Settings, timeout: float) -> list[CheckRow]:
    from connector.app import build_senders

    senders = build_senders(settings)
    try:
        return list(await asyncio.gather(*(check_route(n, s, timeout) for n, s in senders.items())))
    finally:
        for s in senders.values():
            await s.aclose()
            await s.transport.aclose()


# --------------------------------------------------------------------------------------------
# The check


async def run_check(config_file: str | None, connect: bool, environ: Mapping[str, str] | None = None,
                    timeout: float = DEFAULT_TIMEOUT_S, under: Mapping[str, str] | None = None,
                    under_source: str = "") -> CheckReport:
    """Validate the configuration and, with ``connect``, reach Kafka and authenticate every
    route (nothing is sent). Never raises for a bad configuration: every problem is a row.
    ``under``: a running dev's environment (``config.load``), named by ``under_source``."""
    if not config_file and environ is not None:      # None: config.load reads the process environment
        config_file = environ.get(ENV_PREFIX + "CONFIG") or None
    report = CheckReport(config_file=config_file, connected=connect)
    loaded = load_detailed(config_file, environ, under=under)
    settings = loaded.settings
    if settings is None:
        report.rows += [problem_row(p) for p in loaded.problems]
        if connect:
            report.rows.append(CheckRow("connect", "skipped", Status.SKIP,
                                        "not attempted: fix the configuration first"))
        return report
    report.settings = redacted(settings)
    report.sources = dict(loaded.sources)
    if under and not config_file:
        report.rows.append(CheckRow("config", "source", Status.OK,
                                    f"the running dev stack's settings ({under_source}), under the environment"))
    report.rows += config_rows(settings)
    if connect:
        kafka_rows, route_rows = await asyncio.gather(check_kafka(settings, timeout),
                                                      check_routes(settings, timeout))
        report.rows += kafka_rows + route_rows
    order = {"config": 0, "kafka": 1, "topics": 2, **{f"route {n}": 3 + i for i, n in enumerate(settings.routes)}}
    report.rows.sort(key=lambda r: order.get(r.area, 3 + len(order)))   # stable: each route's rows together
    return report


# --------------------------------------------------------------------------------------------
# Rendering

_MARK = {Status.OK: ("OK", "green"), Status.WARN: ("WARN", "yellow"), Status.SKIP: ("SKIP", "dim"),
         Status.FAIL: ("FAIL", "bold red")}


def summary_line(report: CheckReport) -> str:
    parts = [f"{report.count(Status.FAIL)} failed", f"{report.count(Status.WARN)} warning(s)",
             f"{report.count(Status.OK)} ok"]
    if report.count(Status.SKIP):
        parts.append(f"{report.count(Status.SKIP)} skipped")
    verdict = "ready" if report.ok else "NOT ready"
    scope = "configuration and connections" if report.connected else "configuration (use --connect to reach out)"
    return f"{verdict}: {', '.join(parts)}; checked {scope}"


def render(report: CheckReport, file: IO[str] | None = None, *, plain: bool | None = None,
           show_settings: bool = True, width: int | None = None) -> None:
    """Write the report: rich tables on a terminal, plain aligned text otherwise (or ``plain``)."""
    file = file if file is not None else sys.stdout
    if plain is None:
        plain = not (hasattr(file, "isatty") and file.isatty())
    if plain:
        file.write(render_plain(report, show_settings=show_settings))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, width=width, highlight=False, soft_wrap=False)
    table = Table(title="sms-connector check", title_justify="left", expand=False)
    table.add_column("status", no_wrap=True)
    table.add_column("area", no_wrap=True)
    table.add_column("check", overflow="fold")
    table.add_column("result", overflow="fold")
    for r in report.rows:
        label, style = _MARK[r.status]
        table.add_row(f"[{style}]{label}[/]", r.area, r.item, r.detail)
    console.print(table)
    if show_settings and report.settings is not None:
        st = Table(title="Effective settings (secrets redacted)", title_justify="left")
        st.add_column("setting", no_wrap=True)
        st.add_column("value", overflow="fold")
        st.add_column("source", no_wrap=True)
        for path, value, source in report.settings_rows():
            st.add_row(path, value, source if source == "default" else f"[bold]{source}[/]")
        console.print(st)
    console.print(f"[{'green' if report.ok else 'bold red'}]{summary_line(report)}[/]")


def render_plain(report: CheckReport, *, show_settings: bool = True) -> str:
    lines: list[str] = []
    w_area = max([len(r.area) for r in report.rows] + [4])
    w_item = max([len(r.item) for r in report.rows] + [5])
    for r in report.rows:
        lines.append(f"{_MARK[r.status][0]:4}  {r.area:{w_area}}  {r.item:{w_item}}  {r.detail}")
    if show_settings and report.settings is not None:
        rows = report.settings_rows()
        w_path = max([len(p) for p, _, _ in rows] + [7])
        lines.append("")
        lines.append("Effective settings (secrets redacted):")
        for path, value, source in rows:
            lines.append(f"  {path:{w_path}}  {value}  [{source}]")
    lines.append(summary_line(report))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The command (registered in connector.cli: ``main.add_command(check_command)``)


@click.command("check")
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="SMS_CONNECTOR_CONFIG",
              help="TOML config file (also SMS_CONNECTOR_CONFIG). Environment variables override it.")
@click.option("--connect", is_flag=True,
              help="Also reach Kafka (metadata, topics) and authenticate every route. Nothing is sent.")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds allowed for each network step of --connect.")
@click.option("--plain", is_flag=True, help="Plain text even on a terminal (default: tables on a terminal).")
@click.option("--no-settings", is_flag=True, help="Do not list the effective settings.")
def check_command(config: str | None, connect: bool, timeout: float, plain: bool, no_settings: bool) -> None:
    """Validate the configuration (and with --connect, Kafka and each route's credentials).

    Lists every problem with what to fix, then the effective settings with secrets redacted.
    --connect sends no message: Kafka gets a metadata request, each route only authenticates
    (ThingSpace / Rev.io log in, SMPP gets an empty batch, Ogangi a one-result MO read).
    Exit status 1 when anything failed.
    """
    quiet_client_logs()
    from connector.ops import devmanifest

    under = devmanifest.dev_environment(config)
    report = asyncio.run(run_check(config, connect, timeout=timeout, under=under,
                                   under_source=devmanifest.DEFAULT_PATH))
    render(report, sys.stdout, plain=True if plain else None, show_settings=not no_settings)
    if not report.ok:
        sys.exit(1)
