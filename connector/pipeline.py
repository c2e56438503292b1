"""What happens to one outbound record, from its bytes to its terminal outcome. No Kafka.

``Pipeline.outcome(value, timestamp_ms)`` decodes and validates the record, checks expiry,
chooses the route, prepares the message for its provider and sends it (retries included), and
returns the one ``Outcome`` that ends it: accepted, failed (with reason) or dead-lettered. The
dispatch processor (``streams/dispatch.py``) turns outcomes into Kafka records; the contract tests
drive the same path against every simulator without a broker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Container, Mapping

import orjson

from connector import metrics
from connector.breaker import CircuitOpen
from connector.errors import Expired, InDoubt, InvalidMessage, InvalidRecord, OptedOut, SmsError
from connector.inbound import correlation_key
from connector.records import (SCHEMA_VERSION, Accepted, Outcome, decode_outbound, encode_accepted, encode_failed,
                               iso)
from connector.routing import Router
from connector.sender import RouteSender

if TYPE_CHECKING:
    from connector.streams.ledger import PartitionLedger

INTENT, DONE = "intent", "done"   # ledger states (connector.streams.ledger)


@dataclass(frozen=True, slots=True)
class Terminal:
    """How a record ended. ``value`` is the terminal record (None for dead letters, which keep
    the input's bytes); ``reason`` is the failure or dead-letter reason."""

    kind: str                  # "accepted" | "failed" | "dlq" | "skip"
    value: bytes | None
    reason: str | None = None
    error: str | None = None
    field: str | None = None
    # accepted only: (key, value) records for sms.correlation, so receipts find this message
    correlations: tuple[tuple[bytes, bytes], ...] = ()
    # set when the ledger holds an intent for this message: record "done" once the terminal is durable
    ledger_cid: str | None = None


SKIP = Terminal("skip", None)   # a replay whose outcome is recorded: nothing to send, nothing to publish


class Pipeline:
    def __init__(self, senders: Mapping[str, RouteSender], router: Router,
                 optouts: Container[str] = frozenset()) -> None:
        self.senders = senders
        self.router = router
        self.optouts = optouts

    async def outcome(self, value: bytes | None, timestamp_ms: int, ledger: PartitionLedger | None = None,
                      replayed: bool = False) -> Terminal:
        """``replayed``: re-injected by ``dlq replay``; a message whose recorded outcome was failed
        is sent again (after a fix), one already accepted is still a no-op."""
        try:
            msg = decode_outbound(value)
        except InvalidRecord as exc:
            metrics.DEAD_LETTERED.labels(exc.reason).inc()
            return Terminal("dlq", None, exc.reason, exc.message, exc.field)
        known = ledger.state(msg.client_message_id) if ledger is not None else None
        if known == DONE:
            if not (replayed and ledger is not None and ledger.outcome(msg.client_message_id) == "failed"):
                metrics.LEDGER_REPLAYS.labels("done").inc()
                return SKIP
            metrics.LEDGER_REPLAYS.labels("replayed-after-failure").inc()
            known = None
        o = Outcome(msg=msg, received_at=timestamp_ms / 1000)
        try:
            o.route = self.router.choose(msg)
            sender = self.senders[o.route]
            o.provider = sender.provider.name
            if msg.expires_at is not None and msg.expires_at <= time.time():
                raise Expired(f"expired at {iso(msg.expires_at)} before it could be sent", field="expires_at")
            if msg.recipient.phone is not None and msg.recipient.phone in self.optouts:
                metrics.OPTOUT_SUPPRESSED.labels(o.route).inc()
                raise OptedOut("the recipient opted out (sms.optout); not sent", field="recipient")
            prepared = sender.provider.prepare(msg)
            o.encoding, o.segments = prepared.encoded.encoding.value, prepared.segments
        except InvalidMessage as exc:
            return self.failed(o, exc)
        cid = None
        if ledger is not None:
            cid = msg.client_message_id
            if known == INTENT:
                if sender.in_doubt == "fail":
                    metrics.LEDGER_REPLAYS.labels("in-doubt-fail").inc()
                    return replace(self.failed(o, InDoubt(
                        "a previous attempt may have reached the provider (crash before its outcome was "
                        "recorded); route policy in_doubt=fail")), ledger_cid=cid)
                metrics.LEDGER_REPLAYS.labels("in-doubt-resend").inc()
            else:
                await ledger.intent(cid, o.route)
        sent = await sender.send(prepared)
        if isinstance(sent.result, CircuitOpen) and sender.failover_route:
            # The route's circuit is open: its failover takes the message (one hop, never back).
            metrics.FAILOVER.labels(o.route, sender.failover_route).inc()
            o.route = sender.failover_route
            sender = self.senders[o.route]
            o.provider = sender.provider.name
            try:
                prepared = sender.provider.prepare(msg)
            except InvalidMessage as exc:
                return self.failed(o, exc)
            o.encoding, o.segments = prepared.encoded.encoding.value, prepared.segments
            earlier = sent.attempts
            sent = await sender.send(prepared, may_fail_over=False)
            sent.attempts += earlier
        o.attempts, o.submitted_at = sent.attempts, sent.submitted_at
        if isinstance(sent.result, Accepted):
            return Terminal("accepted", encode_accepted(o, sent.result, time.time()),
                            correlations=_correlations(o, sent.result), ledger_cid=cid)
        return replace(self.failed(o, sent.result), ledger_cid=cid)

    @staticmethod
    def failed(o: Outcome, exc: SmsError) -> Terminal:
        metrics.FAILED.labels(o.route or "", o.provider or "", exc.reason).inc()
        value = encode_failed(o, exc.reason, exc.message, time.time(), provider_code=exc.code,
                              provider_text=exc.text)
        return Terminal("failed", value, exc.reason, exc.message)

    @staticmethod
    def internal_error(exc: BaseException) -> Terminal:
        metrics.DEAD_LETTERED.labels("internal").inc()
        return Terminal("dlq", None, "internal", f"internal error: {type(exc).__name__}")


def _correlations(o: Outcome, accepted: Accepted) -> tuple[tuple[bytes, bytes], ...]:
    ids = accepted.provider_request_id or accepted.provider_message_id
    if not ids or o.provider is None:
        return ()
    msg = o.msg
    value = orjson.dumps({
        "schema_version": SCHEMA_VERSION, "client_message_id": msg.client_message_id, "provider": o.provider,
        "route": o.route, "recipient": msg.recipient.as_json(), "metadata": msg.metadata,
        "provider_message_id": accepted.provider_message_id, "provider_request_id": accepted.provider_request_id,
        "submitted_at": iso(o.submitted_at if o.submitted_at is not None else time.time()),
        "expires_at": iso(msg.expires_at) if msg.expires_at is not None else None,
        "final_state": None, "last_state": None,
    })
    # Split messages carry one id per part ("id1,id2"): a receipt for any part finds the message.
    return tuple((correlation_key(o.provider, i).encode(), value) for i in ids.split(",") if i)
