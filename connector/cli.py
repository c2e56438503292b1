"""The ``sms-connector`` command: worker, dev, topics, send, simulate.

Every command has ``--help``; ``worker --help`` lists every setting with its environment
variable (generated from ``connector.config``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import uuid

import click

import connector.providers  # noqa: F401  every command may load routes: each provider registers its settings
from connector import __version__
from connector.config import ConfigError, Settings, describe, load
from connector.errors import SmsError
from connector.devtools.peer import PEERS


def _settings(config: str | None) -> Settings:
    """The worker's settings: its config file and environment only (never a dev manifest)."""
    try:
        return load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _operator_settings(config: str | None) -> Settings:
    """An operator command's settings: --config / the environment, else a running dev's."""
    from connector.ops import devmanifest

    return devmanifest.settings(config)


class _Commands(click.Group):
    """The command group. An operator command meets only expected conditions as one line: Kafka
    unreachable or refusing is said with what to do; anything unexpected is one line plus the
    file holding its traceback. The worker is left alone: its failures go to its own logs."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name != "worker":
            from connector.ops.check import quiet_client_logs

            quiet_client_logs()
        return name, command, rest

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - turned into one line below
            if ctx.invoked_subcommand == "worker":
                raise
            from connector.ops.devmanifest import kafka_error

            expected = kafka_error(exc)
            if expected is not None:
                raise expected from None
            raise click.ClickException(f"unexpected {type(exc).__name__}: {exc} "
                                       f"(traceback in {_traceback_file(exc)})") from None


def _traceback_file(exc: BaseException) -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="sms-connector-error-", suffix=".log")
    with open(fd, "w") as fh:
        fh.write(f"sms-connector {__version__}: {' '.join(sys.argv)}\n")
        fh.write("".join(traceback.format_exception(exc)))
    return path


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


config_option = click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="SMS_CONNECTOR_CONFIG",
                             help="TOML config file (also SMS_CONNECTOR_CONFIG). Environment variables override it.")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sms-connector")
def main() -> None:
    """sms-connector: send SMS from Kafka through providers' HTTP APIs, and publish what happened.

    \b
    Quick start:  sms-connector dev --demo 500        (embedded broker, simulators, a worker)
    Production:   sms-connector worker --config /etc/sms-connector/config.toml
    """


ROLES = ("dispatch", "callbacks", "pollers")


@main.command()
@config_option
@click.option("--role", "roles", multiple=True, type=click.Choice([*ROLES, "all"]), default=("dispatch",),
              show_default=True,
              help="What this process does (repeatable): dispatch (consume sms.outbound, send, publish results), "
                   "callbacks (receive providers' delivery callbacks), pollers (MO and delivery-status polling), "
                   "or all.")
def worker(config: str | None, roles: tuple[str, ...]) -> None:
    """Run a worker: the production process.

    Serves /metrics, /healthz and /readyz on http.host:http.port (the callbacks role adds
    POST /callbacks/<provider> on the same port). Stops cleanly on SIGTERM: stops fetching,
    lets in-flight messages finish (dispatch.shutdown_timeout_s), commits, exits 0.
    """
    from connector import logs
    from connector.app import run_worker

    chosen = set(ROLES) if "all" in roles else set(roles)
    settings = _settings(config)
    logs.configure(settings.log.level, settings.log.format, settings.secrets())
    if "dispatch" in chosen and not settings.routes:
        raise click.ClickException("no routes configured: add a [routes.NAME] section "
                                   "(see `sms-connector worker --help`)")
    from connector.kafka import KafkaAccessError

    try:
        _run(run_worker(settings, roles=frozenset(chosen)))
    except KafkaAccessError as exc:   # one line naming the setting to fix, no traceback, no retrying
        logging.getLogger("connector.worker").error("cannot use Kafka: %s", exc)
        sys.exit(2)


def _format_epilog(self: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    with formatter.section("Settings"):
        formatter.write_text("TOML file `section.key`, or environment variable; the environment wins. "
                             "Secrets accept env:NAME or file:/path references.")
        for d in describe():
            default = f" Default: {d.default}." if d.default else ""
            formatter.write_text(d.path)
            with formatter.indentation():
                formatter.write_text(f"env: {d.env}")
                formatter.write_text(f"({d.type}) {d.doc}{default}")


worker.format_epilog = _format_epilog.__get__(worker)  # type: ignore[method-assign]


@main.group()
def topics() -> None:
    """Create, verify or read the topics of the contract in topics/topics.toml."""


@topics.command("apply")
@config_option
@click.option("--partitions", type=int, default=None, help="Override partition counts (small dev clusters).")
def topics_apply(config: str | None, partitions: int | None) -> None:
    """Create every missing topic (existing ones are left as they are)."""
    from connector.kafka import apply_topics

    settings = _operator_settings(config)
    result = asyncio.run(apply_topics(settings.kafka, partitions))
    for name, state in result:
        click.echo(f"{state:8} {name}")


@topics.command("check")
@config_option
def topics_check(config: str | None) -> None:
    """Verify every topic exists with at least its partition count; exit 1 if not."""
    from connector.kafka import check_topics

    settings = _operator_settings(config)
    states = asyncio.run(check_topics(settings.kafka))
    bad = 0
    for s in states:
        status = "ok" if s.ok else ("not authorized" if not s.authorized else "missing" if not s.exists else f"{s.partitions} partitions < {s.expected_partitions}")
        bad += not s.ok
        click.echo(f"{'ok' if s.ok else 'FAIL':4} {s.name:28} {status}")
    if bad:
        raise click.ClickException(f"{bad} topic(s) not as the contract says: run `sms-connector topics apply`")


@topics.command("tail")
@config_option
@click.argument("name")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record (default: only new ones).")
@click.option("--max-records", "-n", type=click.IntRange(min=1), default=None, help="Stop after N records.")
@click.option("--no-follow", is_flag=True, help="Stop at the end of the topic instead of waiting for more.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per record (topic, partition, offset, timestamp, key, headers, value).")
def topics_tail(config: str | None, name: str, from_beginning: bool, max_records: int | None, no_follow: bool,
                as_json: bool) -> None:
    """Print the records of topic NAME (a name, or a role of the contract: outbound, accepted,
    failed, dlq, retry, delivery, inbound, ...) with partition, offset, time, key and headers.

    \b
    Examples:  sms-connector topics tail accepted --from-beginning
               sms-connector topics tail sms.outbound.dlq --from-beginning --no-follow --json

    Reads every partition without a consumer group: nothing is committed, no worker is
    disturbed, and it works on the embedded dev broker (which kcat cannot read; see README).
    On the embedded broker a tail from the end may first show the last records written
    before it started (its end offsets are approximate). Ctrl-C stops.
    """
    from connector.ops.tools import describe_record, tail, topic_name

    settings = _operator_settings(config)
    try:
        asyncio.run(tail(settings.kafka, topic_name(name), lambda r: click.echo(describe_record(r, as_json)),
                         from_beginning=from_beginning, max_records=max_records, follow=not no_follow))
    except (KeyboardInterrupt, BrokenPipeError):
        pass


@main.command()
@config_option
@click.option("--to", "phone", help="Recipient phone number, E.164 (+14155550100).")
@click.option("--device", help="Recipient device as KIND:ID (e.g. IMEI:990000862471854).")
@click.option("--text", required=True, help="Message text.")
@click.option("--id", "client_message_id", default=None, help="Client message id (default: a new UUID).")
@click.option("--route", default=None, help="Route name (default: routing rules decide).")
@click.option("--sender", default=None, help="Sender id / number (default: the route's).")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Metadata entry (repeatable).")
@click.option("--send-at", default=None, metavar="RFC3339", help="Not sent before this instant (e.g. 2026-03-02T09:00:00-05:00).")
@click.option("--expires-at", default=None, metavar="RFC3339", help="Not sent after this instant: failed, reason expired.")
@click.option("--time-zone", default=None, metavar="IANA",
              help="recipient_time_zone: the route's quiet hours are read in this zone (e.g. America/Chicago) "
                   "instead of the number's.")
@click.option("--bypass-quiet-hours", is_flag=True, help="Send even inside the route's quiet hours (one-time passwords).")
def send(config: str | None, phone: str | None, device: str | None, text: str, client_message_id: str | None,
         route: str | None, sender: str | None, metadata: tuple[str, ...], send_at: str | None,
         expires_at: str | None, time_zone: str | None, bypass_quiet_hours: bool) -> None:
    """Produce one outbound record to sms.outbound (keyed by recipient)."""
    from connector.ops.devmanifest import notice
    from connector.errors import InvalidRecord
    from connector.records import OutboundSms, Recipient, encode_outbound, rfc3339_field
    from connector.ops.tools import produce_one
    from connector.schedule import known_zone

    if bool(phone) == bool(device):
        raise click.UsageError("give exactly one of --to or --device")
    if device:
        kind, _, ident = device.partition(":")
        if not ident:
            raise click.UsageError("--device must be KIND:ID")
        recipient = Recipient(device_kind=kind.upper(), device_id=ident)
    else:
        recipient = Recipient(phone=phone)
    meta = dict(m.split("=", 1) for m in metadata if "=" in m)
    instants: dict[str, float | None] = {}
    for name, value in (("send_at", send_at), ("expires_at", expires_at)):
        try:
            instants[name] = rfc3339_field({name: value}, name) if value else None
        except InvalidRecord as exc:
            raise click.BadParameter(exc.message, param_hint="--" + name.replace("_", "-")) from None
    if time_zone is not None and not known_zone(time_zone):
        raise click.BadParameter(f"{time_zone!r} is not an IANA time zone the tz database knows "
                                 f"(e.g. America/New_York)", param_hint="--time-zone")
    msg = OutboundSms(client_message_id=client_message_id or str(uuid.uuid4()), recipient=recipient, text=text,
                      route=route, sender=sender, metadata=meta, send_at=instants["send_at"],
                      expires_at=instants["expires_at"], recipient_time_zone=time_zone,
                      bypass_quiet_hours=bypass_quiet_hours)
    settings = _operator_settings(config)
    where = asyncio.run(produce_one(settings.kafka, msg, encode_outbound(msg), notice=notice))
    click.echo(f"produced {msg.client_message_id} to {where}")


@main.command()
@click.option("--scenario", "scenarios", default="single,latency50,batch,callbacks", show_default=True,
              help="Comma-separated scenarios: single, latency50, batch, callbacks, soak.")
@click.option("--records", type=int, default=20000, show_default=True, help="Records per scenario (soak: --soak-records).")
@click.option("--soak-records", type=int, default=1_000_000, show_default=True, help="Records of the soak scenario.")
@click.option("--baseline-records", type=int, default=2000, show_default=True,
              help="Records for the faust baseline, measured once per provider latency (0: skip it).")
@click.option("--concurrency", type=int, default=None,
              help="Override every scenario's route concurrency (the raw ceiling uses the same).")
@click.option("--keys", type=int, default=2000, show_default=True, help="Distinct recipients (Kafka keys).")
@click.option("--broker", type=click.Choice(["tansu", "kafka"]), default="tansu", show_default=True,
              help="The local broker of each scenario: tansu (embedded, no Java) or kafka (Apache Kafka, "
                   "production client defaults; needs Java 17 and Maven, fetched once).")
@click.option("--bootstrap-servers", default=None, help="Run against this Kafka cluster (topics must exist; "
              "SMS_CONNECTOR_KAFKA__* for security) instead of a local broker.")
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False), default=None,
              help="Profile the worker with py-spy into this directory; hotspots go into the JSON and notes.")
@click.option("--peer", type=click.Choice(PEERS), default=None,
              help="Also run this real peer on the same job, broker and simulator (built once with Go, cached).")
@click.option("--json", "json_out", is_flag=True, help="One JSON object per scenario instead of the table.")
@click.option("--tracing", "tracing_ratio", type=click.FloatRange(0, 1), default=None, metavar="RATIO",
              help="The worker traces with this sample ratio (1: every message), exporting to an OTLP sink in the "
                   "bench (rows <scenario>+tracing): what tracing costs.")
@click.option("--compare-exactly-once", is_flag=True,
              help="Run each dispatch scenario at-least-once then exactly-once (kafka.exactly_once off / on; "
                   "rows <scenario>/at-least-once and /exactly-once, the ratio in the notes). Needs --broker kafka "
                   "or a cluster with transactions.")
def bench(scenarios: str, records: int, soak_records: int, baseline_records: int, concurrency: int | None,
          keys: int, broker: str, bootstrap_servers: str | None, profile_dir: str | None, peer: str | None,
          json_out: bool, tracing_ratio: float | None, compare_exactly_once: bool) -> None:
    """Measure one worker against the simulators: records/s, p50/p99 latency, peak RSS, with the
    raw ceiling (aiohttp alone) and a typical faust + httpx baseline from the same run.

    Progress goes to stderr; the table (or --json lines) to stdout."""
    from connector.devtools.bench import run_bench
    from connector.devtools.embedded_broker import BrokerUnavailable

    names = [s.strip() for s in scenarios.split(",") if s.strip()]
    try:
        asyncio.run(run_bench(names, records, json_out=json_out, bootstrap_servers=bootstrap_servers, broker=broker,
                              baseline_records=baseline_records, soak_records=soak_records,
                              concurrency=concurrency, keys=keys, profile_dir=profile_dir, peer=peer,
                              tracing=tracing_ratio, compare_exactly_once=compare_exactly_once))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def thingspace() -> None:
    """Verizon ThingSpace operations: callback registration and the MO queue."""


@thingspace.command("register-callbacks")
@config_option
@click.option("--route", default=None, help="Only this ThingSpace route (default: every one).")
def thingspace_register(config: str | None, route: str | None) -> None:
    """Register this connector's callback URL for EnhancedConnectivityService (send progress, MO)
    and SMSDeliveryConfirmation (Delivered / Undeliverable / Expired).

    The URL is callbacks.public_url + /callbacks/thingspace; ThingSpace sends back the
    callbacks.thingspace_username / thingspace_password in every callback.
    """
    from connector.ops.operations import register_callbacks

    settings = _settings(config)
    try:
        done = asyncio.run(register_callbacks(settings, route))
    except (ValueError, SmsError) as exc:
        raise click.ClickException(str(exc)) from None
    for name, service, url in done:
        click.echo(f"registered {service:28} route {name}: {url}")


@thingspace.command("start-callbacks")
@config_option
@click.option("--route", default=None, help="Only this ThingSpace route (default: every one).")
def thingspace_start(config: str | None, route: str | None) -> None:
    """Ask ThingSpace to push queued MO messages to the registered callback
    (PUT /sms/{account}/startCallbacks). Afterwards MO arrive at the callback endpoint instead
    of being polled."""
    from connector.ops.operations import start_callbacks

    settings = _settings(config)
    try:
        results = asyncio.run(start_callbacks(settings, route))
    except (ValueError, SmsError) as exc:
        raise click.ClickException(str(exc)) from None
    for name, ok in results:
        click.echo(f"route {name}: {'callbacks started' if ok else 'ThingSpace did not confirm'}")
    if not all(ok for _, ok in results):
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=0, help="Port (0: a free one, printed at start).")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="Added latency per request.")
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="Share of requests answered 5xx.")
@click.option("--throttle-rate", type=float, default=0.0, show_default=True, help="Share answered 429 + Retry-After.")
@click.option("--timeout-rate", type=float, default=0.0, show_default=True, help="Share held until the client times out.")
@click.option("--reject-rate", type=float, default=0.0, show_default=True, help="Share of messages rejected.")
@click.option("--credential", multiple=True, metavar="KEY=VALUE", help="Override an accepted credential.")
@click.option("--deliver-callbacks", is_flag=True,
              help="thingspace: after each send, POST the delivery callbacks to the registered callback URL.")
def simulate(name: str, host: str, port: int, latency_ms: float, error_rate: float, throttle_rate: float,
             timeout_rate: float, reject_rate: float, credential: tuple[str, ...], deliver_callbacks: bool) -> None:
    """Run one provider simulator alone (NAME: smpp_rest, ...).

    Faults can also be changed live: PUT /_sim/faults with a JSON object; counters at GET /_sim/stats.
    """
    from connector.devtools.simulators import SIMULATORS, Faults, run_simulator

    if name not in SIMULATORS:
        raise click.UsageError(f"unknown simulator {name!r} (known: {', '.join(sorted(SIMULATORS))})")
    faults = Faults(latency_ms=latency_ms, error_rate=error_rate, throttle_rate=throttle_rate,
                    timeout_rate=timeout_rate, reject_rate=reject_rate)
    creds = {**SIMULATORS[name].default_credentials(), **dict(c.split("=", 1) for c in credential if "=" in c)}
    can_deliver = "deliver_callbacks" in inspect.signature(SIMULATORS[name]).parameters
    extra = {"deliver_callbacks": True} if deliver_callbacks and can_deliver else {}
    if deliver_callbacks and not extra:
        raise click.UsageError("--deliver-callbacks applies to the thingspace simulator only")
    _run(run_simulator(SIMULATORS[name](faults, creds, **extra), host, port))


@main.command()
@click.option("--demo", type=int, default=0, help="Produce N demo messages (a mix: GSM-7, Unicode, long, invalid).")
@click.option("--until-done", is_flag=True, help="Exit when every demo message has exactly one terminal record "
                                                  "(exit 0 only if none is missing).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="With --until-done: give up after this.")
@click.option("--http-port", type=int, default=8080, show_default=True, help="Worker's metrics/health port (0: free).")
@click.option("--manifest", default=".sms-connector-dev.json", show_default=True, help="Where to write the manifest.")
def dev(demo: int, until_done: bool, timeout: float, http_port: int, manifest: str) -> None:
    """Run everything locally: embedded Kafka-protocol broker, topics, simulators and a worker.

    Writes a manifest (bootstrap servers, topics, metrics/health URLs, simulators and their
    credentials) to .sms-connector-dev.json while it runs. Stops everything on Ctrl-C / SIGTERM.
    """
    from connector.devtools.dev import run_dev
    from connector.devtools.embedded_broker import BrokerUnavailable

    try:
        code = asyncio.run(run_dev(demo=demo, until_done=until_done, timeout=timeout, http_port=http_port,
                                   manifest_path=manifest))
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def _add_operator_commands() -> None:
    from connector.ops.check import check_command
    from connector.ops.replay import dlq_group
    from connector.ops.status import status_command

    main.add_command(check_command)
    main.add_command(dlq_group)
    main.add_command(status_command)


_add_operator_commands()

if __name__ == "__main__":
    main()
