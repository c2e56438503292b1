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
MESSAGES_IN_CALLS = Gauge("sms_provider_messages_in_calls", "Messages inside provider send calls right now (a crash "
                          "or a freeze leaves at most these in doubt).", ["route"])
UNRECORDED = Gauge("sms_outbound_unrecorded", "Messages whose provider call has returned and whose outcome is not yet "
                   "durable (terminal record and ledger entry): with sms_provider_messages_in_calls, what a crash or "
                   "a freeze now would leave in doubt.")
PROVIDER_RETRIES = Counter("sms_provider_retries_total", "Provider calls retried, by reason.",
                           ["route", "provider", "reason"])
PROVIDER_LOGINS = Counter("sms_provider_logins_total", "Provider logins / session refreshes, by outcome.",
                          ["route", "provider", "outcome"])
ROUTE_RATE_LIMIT = Gauge("sms_route_rate_limit", "This worker's current send rate limit of a route in segments "
                         "per second: its share of the route's rate_limit (its input partitions' share), after 429 "
                         "back-off (0 = unlimited or no partitions). Summed over workers: the deployment's.", ["route"])
RATE_LIMITED_SECONDS = Counter("sms_rate_limited_seconds_total", "Time provider calls waited for their route's "
                               "rate limit.", ["route"])
CIRCUIT_STATE = Gauge("sms_circuit_state", "Circuit breaker state of a route: 0 closed, 1 half-open, 2 open.",
                      ["route"])
CIRCUIT_TRANSITIONS = Counter("sms_circuit_transitions_total", "Circuit breaker state changes, by the state "
                              "entered.", ["route", "state"])
CIRCUIT_WAIT_SECONDS = Counter("sms_circuit_wait_seconds_total", "Time send attempts waited for their route's "
                               "open circuit.", ["route"])
FAILOVER = Counter("sms_failover_total", "Messages sent through a failover route because their route's circuit "
                   "was open.", ["route", "failover"])
HANDED_OFF = Counter("sms_outbound_retry_handoffs_total", "Messages handed off to the retry topic after their "
                     "in-place retries, by the error's reason.", ["route", "reason"])
RETRY_WAITING = Gauge("sms_outbound_retry_waiting", "Retry-topic records held by this worker until their due time.")
PARTITIONS_ASSIGNED = Gauge("sms_kafka_partitions_assigned", "Input partitions assigned to this worker.")
OWNERSHIP_LOST = Counter("sms_kafka_ownership_lost_total", "Times this worker found it may have lost its partitions "
                         "(expelled from the group, generation reset, or a session timeout without a successful "
                         "heartbeat): it stopped sending and rejoined.")
OWNERSHIP_WAITS = Counter("sms_kafka_ownership_waits_total", "Provider calls held because no heartbeat had succeeded "
                          "for most of a session timeout (they go ahead once one does).")
ABANDONED = Counter("sms_outbound_abandoned_total", "Records taken but dropped unsent and uncommitted because this worker "
                    "may no longer own their partition (the new owner sends them).")
COMMITS = Counter("sms_kafka_commits_total", "Offset commits, by outcome.", ["outcome"])
PRODUCE_ERRORS = Counter("sms_kafka_produce_errors_total",
                         "Failed produce attempts of result records (retried until they succeed).", ["topic"])

# -- smart encoding and destination rules (#18) --------------------------------------------------
SMART_ENCODED = Counter("sms_outbound_smart_encoded_total", "Accepted messages sent in GSM-7 because smart encoding "
                        "replaced their look-alike characters.", ["route"])
SEGMENTS_SAVED = Counter("sms_outbound_segments_saved_total", "Segments smart encoding saved on accepted messages "
                         "(what the text as written would have cost, less what it cost).", ["route"])
BLOCKED = Counter("sms_outbound_blocked_total", "Messages refused by a route's destination rules (failed, reason "
                  "blocked-destination, no provider call), by the rule that refused them (block_regions, "
                  "allow_regions, block_number_types, allow_number_types).", ["route", "rule"])

# -- inbound ------------------------------------------------------------------------------------
CALLBACKS = Counter("sms_callbacks_received_total", "Provider callbacks received, by kind and outcome "
                    "(ok, duplicate, unauthorized, invalid, too_large, error).", ["provider", "kind", "outcome"])
MO_RECEIVED = Counter("sms_mo_received_total", "Mobile-originated messages published to sms.inbound.", ["provider"])
MO_PAGES_AT_RISK = Counter("sms_mo_pages_at_risk_total", "MO pages that may have been acknowledged to the provider "
                           "unseen (ThingSpace's open window): a poll without a token whose answer was lost "
                           "(reason no-answer) or in flight at a crash (reason crash).", ["provider", "reason"])
MO_POLLED = Counter("sms_mo_polled_total", "MO messages fetched by pollers (before de-duplication).", ["provider"])
CORRELATION = Counter("sms_correlation_total", "Delivery receipts by correlation outcome (matched, unmatched, "
                      "duplicate).", ["provider", "outcome"])
DELIVERY_LATENCY = Histogram("sms_delivery_latency_seconds", "Submit-to-final-status latency of delivered messages.",
                             ["provider", "state"],
                             buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400))
OPTOUT_SUPPRESSED = Counter("sms_optout_suppressed_total", "Outbound messages not sent because the recipient "
                            "opted out.", ["route"])
OPTOUT_CHANGES = Counter("sms_optout_changes_total", "Opt-out table changes (direction out / in), by source.",
                         ["direction", "source"])
STATUS_POLLS = Counter("sms_status_polls_total", "Delivery-status polls, by outcome.", ["provider", "outcome"])

# -- idempotency ledger -------------------------------------------------------------------------
LEDGER_EVICTED = Counter("sms_ledger_evicted_total", "Ledger entries forgotten before their idempotency window "
                         "ended, to stay within dispatch.idempotency_max_entries.")
LEDGER_ENTRIES = Gauge("sms_ledger_entries", "Client message ids the idempotency ledger remembers (this worker).")
LEDGER_REPLAYS = Counter("sms_ledger_replays_total", "Outbound records seen again whose id the ledger knew, by what "
                         "was done (done: skipped; retrying: skipped, its hand-off exists; in-doubt-resend; in-doubt-fail; "
                         "replayed-after-failure).", ["decision"])

# -- scheduled sends and quiet hours (connector.schedule, streams.scheduled) ----------------------
DEFERRED = Counter("sms_deferred_total", "Messages made to wait for their send time, by reason (scheduled: "
                   "send_at; quiet-hours: the route's quiet hours in the recipient's local time). A message "
                   "may be counted more than once (send_at, then quiet hours).", ["route", "reason"])
DEFERRED_WAITING = Gauge("sms_deferred_waiting", "Deferred messages this worker holds in memory, by the topic they "
                         "were read from: sms.outbound.retry (due within one lap, dispatch.schedule_lap_s) or "
                         "sms.outbound.scheduled (waiting for their next check; that topic's consumer lag counts "
                         "them too, with the records not read yet).", ["topic"])
DEFERRED_FORWARDED = Counter("sms_deferred_forwarded_total", "Records of sms.outbound.scheduled checked at the end "
                             "of a lap, by where they went (retry: due within the next lap, held; scheduled: "
                             "rewritten for another lap).", ["to"])
# -- spend budgets (connector.budget) -----------------------------------------------------------
BUDGET_SPENT = Gauge("sms_budget_segments_spent", "Segments charged to the route's budget in the current window by "
                     "the slots this worker owns (sum over workers: the deployment's spending; scope: '' for the "
                     "route, else the region).", ["route", "scope", "window"])
BUDGET_LIMIT = Gauge("sms_budget_segments", "The route's budget in segments per window (the deployment's; the "
                     "same on every worker).", ["route", "scope", "window"])
BUDGET_HELD = Counter("sms_budget_held_total", "Messages held over a spent budget until its window ends "
                      "(over_budget=hold), by route.", ["route"])
# -- transactions (exactly-once, #16) ------------------------------------------------------------
TRANSACTIONS = Counter("sms_transactions_total", "Kafka transactions ended, by the stream that ran them (role: "
                       "dispatch, callbacks, pollers, correlator) and outcome (committed; aborted: its records "
                       "discarded and written again; fenced: the producer was fenced or broken and replaced, or "
                       "its partition given up).", ["role", "outcome"])
TRANSACTION_COMMIT = Histogram("sms_transaction_commit_seconds", "Time to commit one transaction once it closed: "
                               "its offsets and EndTxn (dispatch: also the acknowledgement of its last record "
                               "batches, which the offsets overlap), by role.", ["role"],
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
