"""The worker's own settings sections (``[kafka]``, ``[dispatch]``, ...), a route's common
settings, and ``Settings``, the whole configuration. Provider-specific route settings are declared
by each provider next to its code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import phonenumbers

from connector.config.kit import Secret, setting

# The vocabulary of a route's destination rules: libphonenumber's regions (ISO 3166-1 alpha-2
# codes that have a numbering plan) and its number types, named as ``PhoneNumber.number_type``.
REGION_CODES: frozenset[str] = frozenset(phonenumbers.SUPPORTED_REGIONS)
NUMBER_TYPES: tuple[str, ...] = ("mobile", "fixed-line", "fixed-line-or-mobile", "toll-free", "premium-rate",
                                 "shared-cost", "voip", "personal-number", "pager", "uan", "voicemail", "unknown")


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
    # -- exactly-once (#16) -------------------------------------------------------------------
    exactly_once: bool = setting(True, doc="Kafka transactions: each batch of finished messages' terminal, correlation "
                                           "and ledger records is committed atomically with the input offsets it "
                                           "finishes, so a read_committed consumer sees exactly one terminal record "
                                           "per message, even across kill -9 and rebalances. Needs brokers with "
                                           "transactions (Apache Kafka); off (or on a broker without them, such as "
                                           "the embedded dev broker Tansu) the worker runs at-least-once.")
    transactional_id_prefix: str = setting("sms-connector", doc="Prefix of the transactional ids: dispatch uses "
                                           "'<prefix>-<group_id>-<partition>', one per input partition (the "
                                           "principal needs Write and Describe on the TransactionalId resources "
                                           "with this prefix).")
    transaction_timeout_s: float = setting(60.0, doc="A transaction open longer than this is aborted by the broker "
                                                     "(its producer is then replaced). Must not exceed the brokers' "
                                                     "transaction.max.timeout.ms.", minimum=1, maximum=900)


@dataclass(frozen=True)
class DispatchSettings:
    max_in_flight: int = setting(2000, doc="Outbound records taken from Kafka and not yet finished, per worker (memory and commit bound).",
                                 minimum=1, maximum=100000)
    commit_interval_s: float = setting(0.25, doc="How often finished offsets are committed when dispatching at-least-once. After a crash, records finished since the last commit are sent again, so shorter means fewer resends. With kafka.exactly_once the offsets commit in each transaction instead (dispatch.transaction_max_s).",
                                       minimum=0.05, maximum=60)
    shutdown_timeout_s: float = setting(25.0, doc="On SIGTERM or rebalance, how long in-flight records may take to finish.",
                                        minimum=0, maximum=600)
    waves: bool = setting(True, doc="Dispatch the records fetched from a partition in waves (one record per key at a "
                                    "time, as always): decoded, sent and produced together, with per-message work only "
                                    "for messages that need more than one call (retries, budgets, in-doubt intents, "
                                    "scheduled sends). Off: every message on its own path, one task each. Records are "
                                    "dispatched one by one anyway while tracing is on.")
    transaction_max_records: int = setting(500, doc="With kafka.exactly_once: a partition's transaction is committed "
                                                    "once this many messages finished in it (or after "
                                                    "transaction_max_s). Larger batches cost less per message (a commit "
                                                    "costs about 25 ms of broker round trips) and leave more in doubt "
                                                    "after a crash.", minimum=1, maximum=100000)
    transaction_max_s: float = setting(0.1, doc="With kafka.exactly_once: the longest a finished message waits for its "
                                                "transaction to commit (its terminal record is invisible to "
                                                "read_committed consumers until then).", minimum=0.001, maximum=30)
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
                                                        "(about 100 bytes each with 30-character ids). Beyond it the oldest are forgotten "
                                                        "before their window ends (sms_ledger_evicted_total counts "
                                                        "them). At 1,000 messages/s a 1 h window needs 3.6 million (about 360 MB): size it with the pod's memory.",
                                           minimum=1000, maximum=100_000_000)
    retry_after_max_s: float = setting(30.0, doc="A provider's Retry-After is honoured in place up to this; a longer one ends the in-place retries (the message is handed off to the retry topic, or fails as throttled at the attempt cap).",
                                       minimum=0, maximum=3600)
    # -- scheduled sends and quiet hours (connector.schedule, streams.scheduled) --
    max_schedule_ahead_s: float = setting(7 * 86400.0, doc="A record whose send_at (or whose quiet-hours wait) is "
                                                          "further ahead than this fails with reason invalid. "
                                                          "Keep it below the retention of sms.outbound.scheduled "
                                                          "(8 days).", minimum=60, maximum=7 * 86400)
    schedule_lap_s: float = setting(1800.0, doc="A message waiting for its send_at (or for the end of quiet hours) "
                                                "is held in memory (via sms.outbound.retry) only in the last lap "
                                                "before it is due; until then it is rewritten to the end of "
                                                "sms.outbound.scheduled once per lap. Longer: fewer rewrites "
                                                "(a message scheduled d ahead is written about d / lap times), "
                                                "more messages held in memory (those due within one lap, bounded "
                                                "by retry_topic_max_waiting).", minimum=10, maximum=86400)


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
    rate_limit: float = setting(0.0, doc="Segments per second the whole deployment sends through the route, at "
                                         "most: the provider account's limit (0 = unlimited). Strict: no "
                                         "one-second interval holds more. Each dispatch worker takes the share "
                                         "of it that its sms.outbound partitions are of all, recomputed on every "
                                         "rebalance; do not divide it by the replica count.",
                                example="50", minimum=0, maximum=100000)
    rate_limit_margin_ms: float = setting(50.0, doc="Safety margin of the rate limit for the provider's clock: "
                                                    "the limit holds over every window of 1 s plus this, so "
                                                    "requests whose way to the provider varies by less than it "
                                                    "never arrive more than rate_limit in any second. Costs "
                                                    "margin/(1 s + margin) of the rate (50 ms: 4.8%).",
                                          minimum=0, maximum=500)
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
    # -- smart encoding and destination rules (#18; connector/encoding.py, connector/destinations.py) --
    smart_encoding: bool = setting(False, doc="Send the GSM-7 form of a text whose only non-GSM-7 characters have a "
                                              "GSM-7 look-alike (curly quotes, dashes, ellipsis, Unicode spaces: the "
                                              "README's table), when it costs no more segments. A text that needs "
                                              "UCS-2 for any other character is sent untouched.")
    allow_regions: str = setting("", doc="Only recipients in these countries are sent (ISO 3166-1 alpha-2 codes, "
                                         "comma-separated); empty: every country. Others fail with reason "
                                         "blocked-destination, no provider call.", example="US,CA")
    block_regions: str = setting("", doc="Recipients in these countries fail with reason blocked-destination, no "
                                         "provider call (ISO 3166-1 alpha-2 codes, comma-separated). Wins over "
                                         "allow_regions.", example="CU,KP")
    allow_number_types: str = setting("", doc="Only recipients whose number type (libphonenumber) is one of these "
                                              "are sent, comma-separated; empty: every type. A number the library "
                                              "cannot type (outside its ranges, accepted by number_check = "
                                              "possible) is unknown: list unknown to let it through. "
                                              "fixed-line-or-mobile numbers pass a list naming mobile or fixed-line.",
                                      example="mobile,fixed-line-or-mobile")
    block_number_types: str = setting("premium-rate", doc="Recipients whose number type is one of these fail with "
                                                          "reason blocked-destination, no provider call "
                                                          "(comma-separated; empty: none). Wins over "
                                                          "allow_number_types. Types: " + ", ".join(NUMBER_TYPES)
                                                          + ".", example="premium-rate,shared-cost")
    quiet_hours: str = setting("", doc="Local hours (HH:MM-HH:MM, 24-hour, may cross midnight; either end may be "
                                       "HH:MM:SS) in the recipient's time zone during which this route sends "
                                       "nothing: a message due then waits for their end (the recipient_time_zone of the record, else the number's "
                                       "zones, the most restrictive when there are several). Records with "
                                       "bypass_quiet_hours skip them. Empty: none.", example="21:00-08:00")
    # -- spend budgets (connector.budget): the deployment's, shared by every worker --
    budget_segments_per_hour: int = setting(0, doc="Segments the whole deployment may send through the route per "
                                                   "UTC hour (0 = no hourly budget). Shared by all workers, kept "
                                                   "in the sms.budget topic across restarts; over it, over_budget "
                                                   "decides.", example="5000", minimum=0, maximum=10**12)
    budget_segments_per_day: int = setting(0, doc="Segments the whole deployment may send through the route per UTC "
                                                  "day (0 = no daily budget).", example="50000", minimum=0,
                                           maximum=10**12)
    budget_regions: str = setting("", doc="Budgets per destination region (the recipient's ISO country code), on "
                                          "top of the route's: 'REGION=PER_HOUR/PER_DAY,...' (0 = none for that "
                                          "window).", example="NG=100/1000,GH=50/500")
    over_budget: str = setting("hold", doc="A message over a budget: hold (handed off to sms.outbound.retry until "
                                           "the window ends, then sent; waits in place when there is no retry "
                                           "topic) or fail (a failed record, reason budget).",
                               choices=("hold", "fail"))


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
