"""Every Prometheus metric of the connector, defined once.

Conventions: ``sms_`` prefix, base units (seconds), ``_total`` counters, low-cardinality labels
only (``route``, ``provider``, ``outcome``, ``reason``, ``topic``); never a phone number, a
message id or a partition as a label. The default registry also exports the process collector
(``process_resident_memory_bytes``, CPU seconds).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("sms_outbound_consumed_total", "Outbound records consumed from Kafka.")
ACCEPTED = Counter("sms_outbound_accepted_total", "Outbound messages accepted by a provider.",
                   ["route", "provider"])
FAILED = Counter("sms_outbound_failed_total", "Outbound messages that ended as failed, by reason.",
                 ["route", "provider", "reason"])
DEAD_LETTERED = Counter("sms_outbound_dead_lettered_total",
                        "Outbound records sent to the dead-letter topic, by reason.", ["reason"])
SEGMENTS = Counter("sms_outbound_segments_total", "SMS segments accepted by providers.",
                   ["route", "provider"])
IN_FLIGHT = Gauge("sms_outbound_in_flight", "Outbound records consumed and not yet finished.")
OLDEST_PENDING = Gauge("sms_outbound_oldest_pending_seconds",
                       "Age of the oldest unfinished outbound record (0 when idle).")
PROVIDER_REQUEST = Histogram(
    "sms_provider_request_duration_seconds", "Duration of provider HTTP calls, by outcome.",
    ["provider", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
PROVIDER_RETRIES = Counter("sms_provider_retries_total", "Provider calls retried, by reason.",
                           ["route", "provider", "reason"])
PROVIDER_LOGINS = Counter("sms_provider_logins_total", "Provider logins / session refreshes, by outcome.",
                          ["route", "provider", "outcome"])
PARTITIONS_ASSIGNED = Gauge("sms_kafka_partitions_assigned", "Input partitions assigned to this worker.")
COMMITS = Counter("sms_kafka_commits_total", "Offset commits, by outcome.", ["outcome"])
PRODUCE_ERRORS = Counter("sms_kafka_produce_errors_total",
                         "Failed produce attempts of result records (retried until they succeed).", ["topic"])
