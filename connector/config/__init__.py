"""The one module that reads configuration: environment variables and an optional TOML file.

A leaf: it imports nothing of ours. Every setting is a dataclass field declared with ``setting()``
(type, default, description, example, whether it is a secret). The same declarations produce
validation, ``worker --help``, ``check``'s table and the README reference, so documentation cannot
drift from behaviour. The sections below are the worker's own; a provider declares its route
settings next to its code and registers them with ``@provider_settings(name)``, so this module
knows no provider (``connector.providers`` registers all of them when imported).

``load_detailed`` returns the settings, where each value came from (``default`` / ``file`` /
``manifest`` / ``env`` / ``override``) and every problem as a ``Problem`` (path, message, fix);
``load`` raises ``ConfigError`` carrying those problems.

Sources, later wins: defaults < TOML file (``--config`` or ``SMS_CONNECTOR_CONFIG``) < a running dev's
environment (``manifest``: operator commands without a config file) < environment < overrides.
Environment names are ``SMS_CONNECTOR_<SECTION>__<FIELD>``, e.g. ``SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS``;
routes are ``SMS_CONNECTOR_ROUTES__<ROUTE>__<FIELD>``. A secret's value may be a reference,
``env:NAME`` or ``file:/path`` (a mounted Kubernetes Secret), resolved at load; secrets are
``Secret`` objects that print as ``***``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

ENV_PREFIX = "SMS_CONNECTOR_"


def env_name(path: str) -> str:
    """The environment variable of a setting path: ``routes.smpp.api_key`` ->
    ``SMS_CONNECTOR_ROUTES__SMPP__API_KEY``."""
    return ENV_PREFIX + "__".join(p.upper() for p in path.split("."))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: where (a setting path, a section, or ``config file
    PATH``), what, and what to do about it."""

    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(ValueError):
    """Configuration is invalid. ``problems`` lists every problem found, each with its path and fix."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(map(str, problems)))
        self.problems = problems


Problems = list[Problem]


class Secret:
    """A secret value: usable via ``.value``, never printed."""

    __slots__ = ("value", "source")

    def __init__(self, value: str, source: str = "literal") -> None:
        self.value = value
        self.source = source  # "literal", "env:NAME" or "file:/path": safe to show

    def __repr__(self) -> str:
        return "Secret(***)" if self.source == "literal" else f"Secret(*** from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def setting(default: Any = dataclasses.MISSING, *, doc: str, example: str | None = None,
            secret: bool = False, choices: tuple[str, ...] | None = None,
            minimum: float | None = None, maximum: float | None = None) -> Any:
    """Declare one documented setting (a dataclass field)."""
    meta = {"doc": doc, "example": example, "secret": secret, "choices": choices,
            "minimum": minimum, "maximum": maximum}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


_PROVIDER_SETTINGS: dict[str, type] = {}
_T = TypeVar("_T", bound=type)


def provider_settings(name: str) -> Callable[[_T], _T]:
    """Class decorator: ``cls`` declares the route settings of provider ``name`` (a route with
    ``provider = name`` is validated against it). The provider's module applies it."""

    def register(cls: _T) -> _T:
        _PROVIDER_SETTINGS[name] = cls
        return cls

    return register


def registered_providers() -> Mapping[str, type]:
    """Provider name -> its route settings class, for every provider registered so far."""
    return MappingProxyType(_PROVIDER_SETTINGS)


# --------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = setting("localhost:9092", doc="Kafka bootstrap servers, comma-separated.",
                                     example="kafka-0.kafka:9092,kafka-1.kafka:9092")
    client_id: str = setting("sms-connector", doc="Client id sent to the brokers.")
    group_id: str = setting("sms-connector-dispatch", doc="Consumer group of the dispatch workers.")
    security_protocol: str = setting("PLAINTEXT", doc="How to reach the brokers.",
                                     choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = setting("PLAIN", doc="SASL mechanism (with a SASL_* protocol).",
                                  choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_username: str = setting("", doc="SASL username.")
    sasl_password: Secret | None = setting(None, doc="SASL password.", secret=True,
                                           example="file:/var/run/secrets/kafka/password")
    ssl_cafile: str = setting("", doc="CA bundle to verify the brokers (SSL / SASL_SSL); system CAs when empty.")
    ssl_certfile: str = setting("", doc="Client certificate for mutual TLS.")
    ssl_keyfile: str = setting("", doc="Client private key for mutual TLS.")
    replication_factor: int = setting(3, doc="Replication factor of topics created by `topics apply`.", minimum=1, maximum=10)
    session_timeout_s: float = setting(15.0, doc="Consumer group session timeout: how fast a dead worker's partitions move.",
                                       minimum=6, maximum=300)
    request_timeout_s: float = setting(30.0, doc="Broker request timeout.", minimum=1, maximum=300)
    idempotent_producer: bool = setting(True, doc="Idempotent producer (no duplicate result records on produce retries). Turn off only for brokers without it (the embedded dev broker).")
    fetch_max_wait_ms: int = setting(100, doc="How long a fetch waits for data on an idle partition: lower means "
                                                  "lower latency at low traffic, more requests.", minimum=1, maximum=10000)
    linger_ms: int = setting(5, doc="Producer linger: results are produced in batches.", minimum=0, maximum=1000)


@dataclass(frozen=True)
class DispatchSettings:
    max_in_flight: int = setting(2000, doc="Outbound records taken from Kafka and not yet finished, per worker (memory and commit bound).",
                                 minimum=1, maximum=100000)
    commit_interval_s: float = setting(0.25, doc="How often finished offsets are committed. After a crash, records finished since the last commit are sent again (at-least-once), so shorter means fewer resends.",
                                       minimum=0.05, maximum=60)
    shutdown_timeout_s: float = setting(25.0, doc="On SIGTERM or rebalance, how long in-flight records may take to finish.",
                                        minimum=0, maximum=600)
    retry_max_attempts: int = setting(4, doc="Provider calls per message in place, per pass (first call included), for "
                                             "retriable errors. The message keeps its place in its recipient's order "
                                             "meanwhile; then it is handed off to sms.outbound.retry (see max_attempts).",
                                      minimum=1, maximum=50)
    max_attempts: int = setting(12, doc="Provider calls per message in all, across passes through sms.outbound.retry; "
                                        "then it fails (reason unavailable or throttled) with the count. Equal to "
                                        "retry_max_attempts: no retry topic (fail after the in-place retries).",
                                minimum=1, maximum=1000)
    retry_topic_delay_s: float = setting(30.0, doc="Wait before the first pass from the retry topic; doubles per pass "
                                                   "(equal jitter). A longer Retry-After wins.", minimum=0, maximum=86400)
    retry_topic_max_delay_s: float = setting(600.0, doc="Cap of the wait before one pass from the retry topic. Keep "
                                                        "the whole schedule well inside idempotency_window_s.",
                                             minimum=0, maximum=86400)
    retry_topic_max_waiting: int = setting(20000, doc="Retry-topic records one worker holds in memory until they are "
                                                      "due (about 1 KB each); beyond, it stops reading the retry topic "
                                                      "until some are sent.", minimum=1, maximum=1000000)
    retry_base_delay_s: float = setting(0.2, doc="Backoff base: full jitter, doubling per attempt.", minimum=0, maximum=60)
    retry_max_delay_s: float = setting(5.0, doc="Backoff cap per wait.", minimum=0, maximum=600)
    idempotency_window_s: float = setting(3600.0, doc="How long the idempotency ledger remembers a client_message_id "
                                                      "(0 turns the ledger off). A replay or duplicate within the window "
                                                      "calls no provider again, as long as idempotency_max_entries holds that many "
                                                      "messages. At most 7 days, the ledger topic's retention.",
                                          minimum=0, maximum=7 * 86400)
    idempotency_max_entries: int = setting(250_000, doc="Most client_message_ids the ledger keeps in memory per worker "
                                                        "(about 200 bytes each). Beyond it the oldest are forgotten "
                                                        "before their window ends (sms_ledger_evicted_total counts "
                                                        "them). At 1,000 messages/s a 1 h window needs 3.6 million (about 700 MB): size it with the pod's memory.",
                                           minimum=1000, maximum=100_000_000)
    retry_after_max_s: float = setting(30.0, doc="A provider's Retry-After is honoured in place up to this; a longer one ends the in-place retries (the message is handed off to the retry topic, or fails as throttled at the attempt cap).",
                                       minimum=0, maximum=3600)


@dataclass(frozen=True)
class HttpSettings:
    host: str = setting("0.0.0.0", doc="Address of the worker's HTTP server (/metrics, /healthz, /readyz).",
                        example="127.0.0.1")
    port: int = setting(8080, doc="Port of the worker's HTTP server.", minimum=0, maximum=65535)
    provider_timeout_s: float = setting(10.0, doc="Timeout of one provider HTTP call (connect + response).",
                                        minimum=0.1, maximum=300)
    provider_max_connections: int = setting(200, doc="Connection pool size per provider route.", minimum=1, maximum=10000)


@dataclass(frozen=True)
class LogSettings:
    level: str = setting("INFO", doc="Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = setting("auto", doc="json (production), console (a terminal), or auto: console on a TTY, else json.",
                          choices=("auto", "json", "console"))


@dataclass(frozen=True)
class RoutingSettings:
    default_route: str = setting("", doc="Route for records that name none and match no rule; the only route when there is one.")
    device_route: str = setting("", doc="Route for device-id recipients (ThingSpace).")
    prefix_routes: str = setting("", doc="Number-prefix rules, longest prefix wins: 'PREFIX=ROUTE,...'.",
                                 example="+1=revio,+58=ogangi")


@dataclass(frozen=True)
class RouteSettings:
    """One route: a provider, its credentials, and how to send through it. Provider-specific
    fields (base_url, credentials, ...) are declared by the provider's own config class."""

    provider: str = setting(doc="Provider of this route.", example="smpp_rest")
    sender: str = setting("", doc="Default sender (from number / sender id) when a record names none.")
    segment_policy: str = setting("whole", doc="Text longer than one segment: reject, split (where the provider allows it) or whole (send as is; the provider concatenates).",
                                  choices=("reject", "split", "whole"))
    max_segments: int = setting(10, doc="Messages needing more segments fail with reason invalid.", minimum=1, maximum=255)
    concurrency: int = setting(64, doc="Provider calls in flight at once on this route.", minimum=1, maximum=10000)
    batch_max: int = setting(1, doc="Messages per provider request where the provider takes several (SMPP Messages[]).",
                             minimum=1, maximum=1000)
    batch_linger_ms: float = setting(2.0, doc="How long a partial batch waits for more messages.", minimum=0, maximum=1000)
    rate_limit: float = setting(0.0, doc="Segments per second this worker sends through the route, at most (the "
                                         "provider account's limit; 0 = unlimited). Strict: no one-second "
                                         "interval holds more. Per worker process: with N workers on one "
                                         "account, give each 1/N.", example="50", minimum=0, maximum=100000)
    rate_limit_min: float = setting(1.0, doc="Floor of the adaptive rate: on 429 the route halves its rate (at "
                                             "most once per second, or per Retry-After), never below this, and "
                                             "climbs back by 5% of rate_limit per second without 429s.",
                                    minimum=0.01, maximum=100000)
    breaker_failure_ratio: float = setting(0.5, doc="The circuit opens when this share of the route's calls in "
                                                    "the window failed (5xx, timeouts, auth; not per-message "
                                                    "rejections or 429s).", minimum=0.01, maximum=1)
    breaker_window_s: float = setting(30.0, doc="Window of recent calls the failure ratio is computed over.",
                                      minimum=1, maximum=3600)
    breaker_min_calls: int = setting(20, doc="The circuit does not open on fewer calls than this in the window.",
                                     minimum=1, maximum=1000000)
    breaker_open_s: float = setting(30.0, doc="How long an open circuit pauses the route before one probe call; "
                                              "doubles on each failed probe.", minimum=0.1, maximum=3600)
    breaker_max_open_s: float = setting(300.0, doc="Longest pause of an open circuit.", minimum=0.1, maximum=86400)
    in_doubt: str = setting("resend", doc="A message whose provider call may or may not have happened (a crash "
                                          "between the call and its recorded outcome): resend (at-least-once) or "
                                          "fail (at-most-once: a failed record, reason in-doubt).",
                            choices=("resend", "fail"))
    number_check: str = setting("possible", doc="How strictly a recipient number is checked before sending "
                                                "(libphonenumber): possible (a known country code and a possible "
                                                "length for it) or valid (also inside an allocated range of the "
                                                "country's number plan; refuses numbers the library's tables do "
                                                "not know yet). A number that fails ends as failed, reason invalid.",
                                choices=("possible", "valid"))
    failover_route: str = setting("", doc="Route that takes this route's messages while its circuit is open "
                                          "(one hop). Empty: they wait for the route to recover.",
                                  example="backup")


@dataclass(frozen=True)
class CallbacksSettings:
    public_url: str = setting("", doc="Base URL at which providers reach this connector's callback endpoint "
                                      "(used by `thingspace register-callbacks`).", example="https://sms.example.com")
    thingspace_username: str = setting("", doc="Username ThingSpace must send in each callback (registered with "
                                               "the callback). Empty: callbacks are refused.")
    thingspace_password: Secret | None = setting(None, doc="Password ThingSpace must send in each callback.",
                                                 secret=True, example="env:THINGSPACE_CALLBACK_PASSWORD")
    max_body_bytes: int = setting(65536, doc="Callback bodies larger than this are refused with 413.",
                                  minimum=1024, maximum=16 * 1024 * 1024)
    dedupe_window: int = setting(100000, doc="How many recent callback event ids are remembered to drop "
                                             "provider resends.", minimum=100, maximum=10_000_000)


@dataclass(frozen=True)
class InboundSettings:
    correlation_ttl_s: float = setting(900.0, doc="A receipt whose accepted message is not known after this goes "
                                                  "to sms.delivery.unmatched.", minimum=1, maximum=7 * 86400)
    mo_poll_interval_s: float = setting(5.0, doc="Pause between MO polls when a provider's queue is empty.",
                                        minimum=0.1, maximum=3600)
    status_poll_interval_s: float = setting(60.0, doc="How often an in-flight message's status is polled "
                                                      "(Ogangi getMessage).", minimum=1, maximum=86400)
    status_poll_rate: float = setting(5.0, doc="At most this many status polls per second per route.",
                                      minimum=0.01, maximum=1000)
    status_poll_max_age_s: float = setting(432000.0, doc="Stop polling a message's status after this (the "
                                                         "network's validity window, 120 h); it ends as expired.",
                                           minimum=60, maximum=30 * 86400)
    optout_stop_words: str = setting("STOP,STOPALL,UNSUBSCRIBE,CANCEL,END,QUIT",
                                     doc="MO texts (the word alone) that opt the sender out, comma-separated.")
    optout_start_words: str = setting("START,UNSTOP", doc="MO texts that opt the sender back in.")
    optout_sync_revio: bool = setting(True, doc="Mirror opt-out changes to every Rev.io route's opt-out list.")


@dataclass(frozen=True)
class TracingSettings:
    enabled: bool = setting(False, doc="OpenTelemetry tracing (connector.tracing): a span per outbound message "
                                       "(child of the producer's traceparent header), per provider call, per "
                                       "callback and poll, and the trace context on every output record. Off: "
                                       "no span is made and no header is added.")
    otlp_url: str = setting("http://localhost:4318/v1/traces", doc="OTLP/HTTP (protobuf) endpoint spans are "
                            "exported to, in batches.", example="http://otel-collector.observability:4318/v1/traces")
    sample_ratio: float = setting(1.0, doc="Share of new traces recorded; a message whose producer's traceparent "
                                           "is sampled (or not) follows its producer's decision.",
                                  minimum=0.0, maximum=1.0)
    service_name: str = setting("sms-connector", doc="service.name of the spans.")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    callbacks: CallbacksSettings = field(default_factory=CallbacksSettings)
    inbound: InboundSettings = field(default_factory=InboundSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    # route name -> (common route settings, provider-specific config object)
    routes: Mapping[str, "Route"] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Every configured secret value (for log-scanning tests and redaction)."""
        found: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, Secret):
                found.append(obj.value)
            elif dataclasses.is_dataclass(obj):
                for f in dataclasses.fields(obj):
                    walk(getattr(obj, f.name))
            elif isinstance(obj, Mapping):
                for v in obj.values():
                    walk(v)

        walk(self)
        return [s for s in found if s]


@dataclass(frozen=True)
class Route:
    name: str
    common: RouteSettings
    provider: Any  # the provider's config dataclass instance


SECTIONS: dict[str, type] = {"kafka": KafkaSettings, "dispatch": DispatchSettings, "http": HttpSettings,
                             "log": LogSettings, "routing": RoutingSettings, "callbacks": CallbacksSettings,
                             "inbound": InboundSettings, "tracing": TracingSettings}


# --------------------------------------------------------------------------------------------
# Loading


def _resolve_secret(raw: Any, path: str, problems: Problems, environ: Mapping[str, str]) -> Secret | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, Secret):
        return raw
    text = str(raw)
    if text.startswith("env:"):
        name = text[4:]
        if name not in environ:
            problems.append(Problem(path, f"refers to environment variable {name}, which is not set",
                                    f"set {name} in the connector's environment (e.g. from a Kubernetes "
                                    f"Secret), or point {path} at another env:NAME or file:/path"))
            return None
        return Secret(environ[name], source=text)
    if text.startswith("file:"):
        p = Path(text[5:])
        try:
            return Secret(p.read_text().strip(), source=text)
        except OSError as exc:
            problems.append(Problem(path, f"cannot read secret file {p}: {exc.strerror}",
                                    f"mount the secret at {p} (and make it readable), or correct {path}"))
            return None
    return Secret(text)


def _coerce(f: dataclasses.Field[Any], hint: Any, raw: Any, path: str, problems: Problems,
            environ: Mapping[str, str]) -> Any:
    meta = f.metadata
    if meta.get("secret"):
        return _resolve_secret(raw, path, problems, environ)
    base = _base_type(hint)
    try:
        if base is bool:
            if isinstance(raw, bool):
                value: Any = raw
            elif str(raw).lower() in ("1", "true", "yes", "on"):
                value = True
            elif str(raw).lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError
        elif base is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw)
        elif base is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        else:
            value = str(raw)
    except (TypeError, ValueError):
        problems.append(Problem(path, f"expected {base.__name__}, got {raw!r}",
                                f"give {path} a value of type {base.__name__} (config file or {env_name(path)})"))
        return None
    choices = meta.get("choices")
    if choices and value not in choices:
        problems.append(Problem(path, f"{value!r} is not one of {', '.join(choices)}",
                                f"set {path} to one of: {', '.join(choices)}"))
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and value < lo or hi is not None and value > hi:
        bound = (f"between {lo} and {hi}" if lo is not None and hi is not None else
                 f"of at least {lo}" if lo is not None else f"of at most {hi}")
        problems.append(Problem(path, f"{value!r} is out of range [{lo}, {hi}]", f"set {path} to a value {bound}"))
    return value


def _base_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if args else str
    return hint if isinstance(hint, type) else str


def build(cls: type, raw: Mapping[str, Any], path: str, problems: Problems,
          environ: Mapping[str, str] = os.environ) -> Any:
    """Construct settings dataclass ``cls`` from a raw mapping, collecting problems."""
    raw = dict(raw)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(f, hints[f.name], raw.pop(f.name), f"{path}.{f.name}", problems, environ)
            if f.name.endswith("_url") and isinstance(kwargs[f.name], str):
                _check_url(kwargs[f.name], f"{path}.{f.name}", problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            doc = f.metadata.get("doc", "")
            problems.append(Problem(f"{path}.{f.name}", f"required ({doc})",
                                    f"set {path}.{f.name} in the config file or {env_name(f'{path}.{f.name}')}"
                                    + (f" ({doc})" if doc else "")))
    for unknown in sorted(raw):
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        problems.append(Problem(f"{path}.{unknown}", f"unknown setting (known: {known})",
                                f"remove {path}.{unknown} or correct its spelling (known here: {known})"))
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None or _nullable(cls, k)})
    except TypeError:
        return None


def _check_url(value: str, path: str, problems: Problems) -> None:
    """A ``*_url`` setting (a provider's base_url, callbacks.public_url) is an http(s) URL with a host:
    the HTTP client would refuse anything else only at the first call, as a retriable error."""
    if not value:
        return
    fix = f"set {path} to an http:// or https:// URL with a host, e.g. https://api.example.com"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        problems.append(Problem(path, f"{value!r} is not an http:// or https:// URL", fix))
    elif not rest.split("/", 1)[0].rpartition("@")[2]:
        problems.append(Problem(path, f"{value!r} has no host", fix))


def _nullable(cls: type, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.metadata.get("secret", False)


# Kubernetes injects <SERVICE>_PORT / _SERVICE_HOST / ... for every Service in the namespace; a
# Service named "sms-connector-callbacks" yields SMS_CONNECTOR_CALLBACKS_PORT. Not settings.
_SERVICE_LINK = re.compile(r"^SMS_CONNECTOR_[A-Z0-9_]*?_(PORT|SERVICE_HOST|SERVICE_PORT\w*|PORT_\d+_\w+)$")


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        if "__" not in key and _SERVICE_LINK.match(key):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class Loaded:
    """What loading found: the settings (None when there are problems), where each setting path's
    value came from (``default``, ``file``, ``manifest``: a running dev's environment, ``env`` or
    ``override``), and every problem."""

    settings: Settings | None
    sources: Mapping[str, str]
    problems: tuple[Problem, ...]


def _origins(tree: Mapping[str, Any], source: str, prefix: str, out: dict[str, str]) -> None:
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            _origins(v, source, path, out)
        else:
            out[path] = source


def load(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None, under: Mapping[str, str] | None = None) -> Settings:
    """Load and validate settings; raises ConfigError listing every problem (see ``load_detailed``)."""
    loaded = load_detailed(config_file, environ, overrides, under)
    if loaded.problems:
        raise ConfigError(list(loaded.problems))
    assert loaded.settings is not None
    return loaded.settings


def load_detailed(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None, under: Mapping[str, str] | None = None) -> Loaded:
    """Load and validate settings, saying where each value came from and what is wrong.

    ``under``: variables the environment overrides, used only when there is no config file (the
    operator commands pass a running ``dev``'s, from its manifest)."""
    environ = process_env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if under and not config_file:
        layers.append(("manifest", _env_tree(under)))
        environ = {**under, **environ}
    problems: Problems = []
    if config_file:
        where = f"config file {config_file}"
        try:
            layers.insert(0, ("file", tomllib.loads(Path(config_file).read_text())))
        except OSError as exc:
            return Loaded(None, {}, (Problem(where, str(exc.strerror),
                                             "check the path given with --config or SMS_CONNECTOR_CONFIG"),))
        except tomllib.TOMLDecodeError as exc:
            return Loaded(None, {}, (Problem(where, f"not valid TOML: {exc}", "fix the TOML syntax at the position shown"),))
    layers.append(("env", _env_tree(process_env)))
    if overrides:
        layers.append(("override", overrides))
    origin: dict[str, str] = {}
    for source, tree in layers:
        raw = _merge(raw, tree)
        _origins(tree, source, "", origin)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = raw.pop(name, {})
        if not isinstance(section, Mapping):
            problems.append(_not_a_table(name))
            section = {}
        sections[name] = build(cls, section, name, problems, environ)
    routes_raw = raw.pop("routes", {})
    for unknown in sorted(raw):
        known = ", ".join([*SECTIONS, "routes"])
        problems.append(Problem(unknown, f"unknown section (known: {known})",
                                f"remove the [{unknown}] section or correct its name (known: {known})"))
    routes = {name: _build_route(name, r, problems, environ) for name, r in routes_raw.items()}
    settings = None
    if not problems:
        settings = Settings(**sections, routes=routes)
        _check_routing(settings, problems)
    if problems:
        return Loaded(None, {}, tuple(problems))
    assert settings is not None
    return Loaded(settings, _sources(settings, origin), ())


def _sources(settings: Settings, origin: Mapping[str, str]) -> dict[str, str]:
    """Setting path -> where its value came from, for every field of ``settings``."""
    objects: list[tuple[str, Any]] = [(name, getattr(settings, name)) for name in SECTIONS]
    for name, route in settings.routes.items():
        objects += [(f"routes.{name}", route.common), (f"routes.{name}", route.provider)]
    return {f"{prefix}.{f.name}": origin.get(f"{prefix}.{f.name}", "default")
            for prefix, obj in objects for f in dataclasses.fields(obj)}


def _not_a_table(path: str) -> Problem:
    return Problem(path, "expected a table of settings", f"make {path} a TOML table ([{path}]) of settings")


def _build_route(name: str, raw: Any, problems: Problems, environ: Mapping[str, str]) -> Route | None:
    path = f"routes.{name}"
    if not isinstance(raw, Mapping):
        problems.append(_not_a_table(path))
        return None
    raw = dict(raw)
    provider_name = raw.get("provider")
    if provider_name not in _PROVIDER_SETTINGS:
        known = ", ".join(sorted(_PROVIDER_SETTINGS))
        problems.append(Problem(f"{path}.provider", f"{provider_name!r} is not a provider (known: {known})",
                                f"set {path}.provider to one of: {known}"))
        return None
    common_names = {f.name for f in dataclasses.fields(RouteSettings)}
    common = build(RouteSettings, {k: v for k, v in raw.items() if k in common_names}, path, problems, environ)
    provider_cls = _PROVIDER_SETTINGS[provider_name]
    specific = build(provider_cls, {k: v for k, v in raw.items() if k not in common_names}, path, problems,
                     environ)
    return Route(name=name, common=common, provider=specific)


def _check_routing(settings: Settings, problems: Problems) -> None:
    routes = settings.routes
    r = settings.routing
    configured = ", ".join(routes) or "none"
    for label, value in (("routing.default_route", r.default_route), ("routing.device_route", r.device_route)):
        if value and value not in routes:
            problems.append(Problem(label, f"unknown route {value!r} (configured: {configured})",
                                    f"add a [routes.{value}] section, or set {label} to one of the configured "
                                    f"routes: {configured}"))
    for prefix, route in parse_prefix_routes(r.prefix_routes, problems):
        if route not in routes:
            problems.append(Problem("routing.prefix_routes", f"{prefix}={route}: unknown route {route!r}",
                                    f"add a [routes.{route}] section, or change the rule {prefix}={route} in "
                                    f"routing.prefix_routes"))
    for name, route in routes.items():
        failover = route.common.failover_route
        if failover and (failover not in routes or failover == name):
            path = f"routes.{name}.failover_route"
            problems.append(Problem(path, f"{failover!r} is not another configured route (configured: "
                                          f"{', '.join(routes)})", f"correct {path}"))


def parse_prefix_routes(text: str, problems: Problems | None = None) -> list[tuple[str, str]]:
    rules: list[tuple[str, str]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        prefix, sep, route = item.partition("=")
        if not sep or not prefix.strip() or not route.strip():
            if problems is not None:
                problems.append(Problem("routing.prefix_routes", f"{item!r} is not PREFIX=ROUTE",
                                        "write routing.prefix_routes as PREFIX=ROUTE rules separated by commas, "
                                        "e.g. +1=revio,+58=ogangi"))
            continue
        rules.append((prefix.strip(), route.strip()))
    return rules


# --------------------------------------------------------------------------------------------
# Documentation


@dataclass(frozen=True)
class SettingDoc:
    path: str
    env: str
    type: str
    default: str
    doc: str
    secret: bool


def describe() -> list[SettingDoc]:
    """Every documented setting (the README reference, ``worker --help`` and ``check``), provider
    route settings included for the providers registered (``import connector.providers``)."""

    docs: list[SettingDoc] = []

    def add(cls: type, path: str, env: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = "" if f.default in (dataclasses.MISSING, None) else str(f.default)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                default = "(required)"
            hint = _base_type(hints[f.name])
            doc = meta.get("doc", "")
            if meta.get("choices"):
                doc += f" One of: {', '.join(meta['choices'])}."
            docs.append(SettingDoc(f"{path}.{f.name}", f"{env}__{f.name.upper()}",
                                   "secret" if meta.get("secret") else hint.__name__, default, doc,
                                   bool(meta.get("secret"))))

    for name, cls in SECTIONS.items():
        add(cls, name, f"{ENV_PREFIX}{name.upper()}")
    add(RouteSettings, "routes.<name>", f"{ENV_PREFIX}ROUTES__<NAME>")
    for pname, cls in sorted(_PROVIDER_SETTINGS.items()):
        add(cls, f"routes.<name> (provider={pname})", f"{ENV_PREFIX}ROUTES__<NAME>")
    return docs


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as a plain dict with secrets shown as ``***`` (or their reference)."""

    def conv(obj: Any) -> Any:
        if isinstance(obj, Secret):
            return "***" if obj.source == "literal" else f"*** ({obj.source})"
        if dataclasses.is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Mapping):
            return {k: conv(v) for k, v in obj.items()}
        return obj

    return conv(settings)
