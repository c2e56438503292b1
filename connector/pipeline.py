"""What happens to one outbound record, from its bytes to its terminal outcome. No Kafka.

``Pipeline.outcome(value, timestamp_ms)`` decodes and validates the record, checks expiry,
chooses the route, prepares the message for its provider and sends it (retries included), and
returns the one ``Outcome`` that ends it: accepted, failed (with reason) or dead-lettered. The
dispatch processor (``streams/dispatch.py``) turns outcomes into Kafka records; the contract tests
drive the same path against every simulator without a broker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

from connector import metrics
from connector.errors import Expired, InvalidMessage, InvalidRecord, SmsError
from connector.records import Accepted, Outcome, decode_outbound, encode_accepted, encode_failed, iso
from connector.routing import Router
from connector.sender import RouteSender


@dataclass(frozen=True, slots=True)
class Terminal:
    """How a record ended. ``value`` is the terminal record (None for dead letters, which keep
    the input's bytes); ``reason`` is the failure or dead-letter reason."""

    kind: str                  # "accepted" | "failed" | "dlq"
    value: bytes | None
    reason: str | None = None
    error: str | None = None
    field: str | None = None


class Pipeline:
    def __init__(self, senders: Mapping[str, RouteSender], router: Router) -> None:
        self.senders = senders
        self.router = router

    async def outcome(self, value: bytes | None, timestamp_ms: int) -> Terminal:
        try:
            msg = decode_outbound(value)
        except InvalidRecord as exc:
            metrics.DEAD_LETTERED.labels(exc.reason).inc()
            return Terminal("dlq", None, exc.reason, exc.message, exc.field)
        o = Outcome(msg=msg, received_at=timestamp_ms / 1000)
        try:
            if msg.expires_at is not None and msg.expires_at <= time.time():
                raise Expired(f"expired at {iso(msg.expires_at)} before it could be sent", field="expires_at")
            o.route = self.router.choose(msg)
            sender = self.senders[o.route]
            o.provider = sender.provider.name
            prepared = sender.provider.prepare(msg)
            o.encoding, o.segments = prepared.encoded.encoding.value, prepared.segments
        except InvalidMessage as exc:
            return self.failed(o, exc)
        sent = await sender.send(prepared)
        o.attempts, o.submitted_at = sent.attempts, sent.submitted_at
        if isinstance(sent.result, Accepted):
            return Terminal("accepted", encode_accepted(o, sent.result, time.time()))
        return self.failed(o, sent.result)

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
