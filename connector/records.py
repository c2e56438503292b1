"""Every record type and its wire form (orjson), validated against the schemas in ``topics/``:
outbound, accepted/failed, correlation, ledger entry, and the inbound ones (delivery receipt,
MO message, opt-out change).

``decode_outbound`` is the one way bytes from ``sms.outbound`` become an ``OutboundSms``; the
``encode_*`` functions are the one way terminal records become bytes. The JSON Schemas in
``topics/schemas`` are compiled once (fastjsonschema) and enforced here, so the documented
contract and the code cannot drift apart. Schema version: 1 for every record type.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Callable, Sequence

import fastjsonschema
import orjson

from connector import contract as topics
from connector import numbers, schedule
from connector.errors import InvalidMessage, InvalidRecord

SCHEMA_VERSION = 1

# The states of a ``sms.ledger`` entry (key = client_message_id): a send about to be made on an
# at-most-once route, a hand-off to the retry topic, a recorded outcome. Defined once, here.
INTENT, RETRYING, DONE = "intent", "retrying", "done"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ``sms.ledger`` record (key: client_message_id). ``outcome`` is set on ``done``
    entries, ``token`` (the hand-off's) on ``retrying`` ones."""

    state: str
    at: float                      # epoch seconds
    route: str | None = None
    outcome: str | None = None
    token: str | None = None

    @property
    def detail(self) -> str | None:
        """What the ledger keeps besides the state: the token while retrying, else the outcome."""
        return self.token if self.state == RETRYING else self.outcome

    def encode(self) -> bytes:
        entry: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "state": self.state, "at": self.at,
                                 "route": self.route, "outcome": self.outcome}
        if self.token is not None:
            entry["token"] = self.token
        return orjson.dumps(entry)

    @classmethod
    def decode(cls, value: bytes) -> LedgerEntry:
        """The entry in a stored value; InvalidRecord when it cannot be read."""
        try:
            d = orjson.loads(value)
            return cls(state=d["state"], at=float(d["at"]), route=d.get("route"), outcome=d.get("outcome"),
                       token=d.get("token"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRecord(f"unreadable ledger entry: {type(exc).__name__}") from None
DEVICE_KINDS = frozenset({"ESN", "ICCID", "IMEI", "MDN", "MEID", "MSISDN", "IMSI", "EID"})
_NUMBER_KINDS = {"MDN": "nanp10", "MSISDN": "digits"}   # device ids that are phone numbers

_validate_outbound = fastjsonschema.compile(topics.schema("outbound_sms.json"))


def _recipient_validators() -> dict[str, Callable[[Any], Any]]:
    """The outbound schema with ``recipient``'s oneOf narrowed to one branch, per branch's key.

    Each branch requires its own key and allows no other, so a recipient whose only key is K
    can match K's branch alone: the narrowed schema accepts exactly what the full one does.
    fastjsonschema checks every oneOf branch by raising and catching an exception, which was
    the largest single cost of decoding a record; the full schema still decides (and words the
    error for) every other shape."""
    schema = topics.schema("outbound_sms.json")
    validators = {}
    for branch in schema["properties"]["recipient"]["oneOf"]:
        [key] = branch["required"]
        narrowed = copy.deepcopy(schema)
        narrowed["properties"]["recipient"] = branch
        validators[key] = fastjsonschema.compile(narrowed)
    return validators


_VALIDATE_BY_RECIPIENT = _recipient_validators()


def validate_outbound(data: dict[str, Any]) -> None:
    """Raise ``fastjsonschema.JsonSchemaException`` unless ``data`` matches outbound_sms.json."""
    recipient = data.get("recipient")
    if isinstance(recipient, dict) and len(recipient) == 1:
        narrowed = _VALIDATE_BY_RECIPIENT.get(next(iter(recipient)))
        if narrowed is not None:
            narrowed(data)
            return
    _validate_outbound(data)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A phone number (E.164), a device identifier (kind + id), or a selection of devices
    (account / group / service plan / custom fields; ThingSpace)."""

    phone: str | None = None
    device_kind: str | None = None
    device_id: str | None = None
    selection: dict[str, Any] | None = None

    @property
    def is_device(self) -> bool:
        """Device ids and device selections: routed to ``routing.device_route``."""
        return self.device_id is not None or self.selection is not None

    def as_json(self) -> dict[str, Any]:
        if self.phone is not None:
            return {"phone": self.phone}
        if self.selection is not None:
            return {"selection": self.selection}
        return {"device": {"kind": self.device_kind, "id": self.device_id}}

    def key(self) -> str:
        """The sms.outbound key convention: the number, ``KIND:ID``, or ``selection:...``."""
        if self.phone is not None:
            return numbers.canonical(self.phone) or self.phone
        if self.selection is not None:
            return "selection:" + ",".join(f"{k}={v}" for k, v in sorted(self.selection.items()) if isinstance(v, str))
        return f"{self.device_kind}:{self.device_id}"

    def masked(self) -> str:
        """For logs: never a full number or device id."""
        if self.selection is not None:
            return "selection"
        value = self.phone if self.phone is not None else f"{self.device_kind}:{self.device_id}"
        return value[:4] + "…" + value[-2:] if len(value) > 6 else "…"

    @classmethod
    def from_phone(cls, text: str) -> Recipient:
        """A phone recipient as a producer wrote it: its canonical E.164 when it is a number
        (``connector.numbers``), else as given (the route then fails it, reason invalid)."""
        return cls(phone=numbers.canonical(text) or text)

    def number(self, level: str = numbers.DEFAULT_LEVEL) -> numbers.PhoneNumber:
        """The parsed phone number at a route's validation level; InvalidMessage otherwise."""
        if self.phone is None:
            raise InvalidMessage("this route needs a phone number, not a device id", field="recipient")
        return numbers.check(numbers.parse(self.phone), level)

    @property
    def e164(self) -> str | None:
        """The canonical number of this person: a phone recipient's, or a device addressed by
        its number (MDN: 10 North American digits; MSISDN: international digits), else None.
        The opt-out table and routing look it up, so a STOP blocks every form of the number."""
        if self.phone is not None:
            return numbers.canonical(self.phone)
        if self.device_id is not None and self.device_kind in _NUMBER_KINDS:
            return numbers.from_provider(self.device_id, _NUMBER_KINDS[self.device_kind])
        return None

    @property
    def region(self) -> str | None:
        """ISO 3166-1 country of the number (None: a device, a non-geographic or invalid number)."""
        e164 = self.e164
        return numbers.parse(e164).region if e164 is not None else None

    def require_e164(self, level: str = numbers.DEFAULT_LEVEL) -> str:
        return self.number(level).e164


@dataclass(frozen=True, slots=True)
class OutboundSms:
    client_message_id: str
    recipient: Recipient
    text: str
    route: str | None = None
    provider: str | None = None
    sender: str | None = None
    expires_at: float | None = None          # epoch seconds
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # scheduled sends and quiet hours (connector.schedule)
    send_at: float | None = None             # epoch seconds; not sent before
    recipient_time_zone: str | None = None   # IANA zone for quiet hours, instead of the number's
    bypass_quiet_hours: bool = False         # e.g. one-time passwords

    def options_for(self, provider: str) -> dict[str, Any]:
        return self.options.get(provider) or {}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A provider accepted one message."""

    provider_message_id: str | None
    provider_request_id: str | None = None
    details: dict[str, Any] | None = None


def decode_outbound(value: bytes | None) -> OutboundSms:
    """Bytes from ``sms.outbound`` -> OutboundSms, or InvalidRecord saying what is wrong."""
    if value is None:
        raise InvalidRecord("record has no value (tombstone)")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"value is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRecord("value is not a JSON object")
    try:
        validate_outbound(data)
    except fastjsonschema.JsonSchemaException as exc:
        name = getattr(exc, "name", None)
        field_name = name[5:] if isinstance(name, str) and name.startswith("data.") else None
        raise InvalidRecord(f"does not match outbound_sms.json: {exc.message}",
                            field=field_name) from None
    expires_at = rfc3339_field(data, "expires_at")
    # -- scheduled sends and quiet hours (connector.schedule) --
    send_at = rfc3339_field(data, "send_at")
    zone = data.get("recipient_time_zone")
    if zone is not None and not schedule.known_zone(zone):
        raise InvalidRecord(f"recipient_time_zone {zone!r} is not an IANA time zone the tz database knows "
                            f"(e.g. America/New_York)", field="recipient_time_zone")
    rcpt = data["recipient"]
    if "phone" in rcpt:
        recipient = Recipient.from_phone(rcpt["phone"])
    elif "selection" in rcpt:
        recipient = Recipient(selection=rcpt["selection"])
    else:
        kind = rcpt["device"]["kind"].upper()
        if kind not in DEVICE_KINDS:
            raise InvalidRecord(f"recipient.device.kind {kind!r} is not one of "
                                f"{', '.join(sorted(DEVICE_KINDS))}", field="recipient.device.kind")
        recipient = Recipient(device_kind=kind, device_id=rcpt["device"]["id"])
    return OutboundSms(
        client_message_id=data["client_message_id"],
        recipient=recipient,
        text=data["text"],
        route=data.get("route"),
        provider=data.get("provider"),
        sender=data.get("sender"),
        expires_at=expires_at,
        options=data.get("options") or {},
        metadata=data.get("metadata") or {},
        send_at=send_at,
        recipient_time_zone=zone,
        bypass_quiet_hours=bool(data.get("bypass_quiet_hours", False)),
    )


def decode_outbound_many(values: Sequence[bytes | None]) -> list[OutboundSms | InvalidRecord]:
    """``decode_outbound`` over a batch in one loop: the messages, with an ``InvalidRecord`` in
    place of each record that cannot be one (aligned by index)."""
    out: list[OutboundSms | InvalidRecord] = []
    append = out.append
    for value in values:
        try:
            append(decode_outbound(value))
        except InvalidRecord as exc:
            append(exc)
    return out


def rfc3339_field(data: dict[str, Any], name: str) -> float | None:
    """An RFC 3339 date-time field (its shape checked by the schema's ``format``) as epoch
    seconds; InvalidRecord when it is not a real instant with an offset."""
    if name not in data:
        return None
    try:
        # RFC 3339 allows a lowercase t and z; fromisoformat wants them upper case
        when = datetime.fromisoformat(data[name].upper())
    except ValueError:
        raise InvalidRecord(f"{name} is not an RFC 3339 date-time", field=name) from None
    if when.tzinfo is None:
        raise InvalidRecord(f"{name} needs a time zone offset (e.g. Z)", field=name)
    return when.timestamp()


def encode_outbound(msg: OutboundSms) -> bytes:
    """The wire form of an OutboundSms (used by ``send``, ``dev --demo`` and the tests)."""
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "client_message_id": msg.client_message_id,
        "recipient": msg.recipient.as_json(),
        "text": msg.text,
    }
    for name in ("route", "provider", "sender"):
        if getattr(msg, name) is not None:
            data[name] = getattr(msg, name)
    if msg.expires_at is not None:
        data["expires_at"] = iso(msg.expires_at)
    if msg.options:
        data["options"] = msg.options
    if msg.metadata:
        data["metadata"] = msg.metadata
    if msg.send_at is not None:
        data["send_at"] = iso(msg.send_at)
    if msg.recipient_time_zone is not None:
        data["recipient_time_zone"] = msg.recipient_time_zone
    if msg.bypass_quiet_hours:
        data["bypass_quiet_hours"] = True
    return orjson.dumps(data)


_iso_prefixes: dict[int, str] = {}


def iso(ts: float) -> str:
    """Epoch seconds -> RFC 3339 UTC with milliseconds. Formats each second once (hot path: every
    result record carries three timestamps, of different seconds when a record waited: the
    cache holds recent seconds, not just the last one)."""
    second = int(ts // 1)
    micros = round((ts - second) * 1_000_000)   # as datetime does: to the microsecond, then truncate
    if micros >= 1_000_000:
        second, micros = second + 1, 0
    prefix = _iso_prefixes.get(second)
    if prefix is None:
        if len(_iso_prefixes) >= 256:
            _iso_prefixes.clear()
        prefix = _iso_prefixes[second] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{prefix}.{micros // 1000:03d}Z"


class Ending(StrEnum):
    """How the pipeline finished with a record: three terminal outcomes (the ``outcome`` of
    ``sms.accepted`` / ``sms.failed``, and the dead-letter topic), a hand-off to the retry topic,
    or nothing to do (its outcome is already recorded)."""

    ACCEPTED = "accepted"
    FAILED = "failed"
    DEAD_LETTERED = "dlq"
    HANDED_OFF = "retry"
    SKIPPED = "skip"


@dataclass(slots=True)
class SendFacts:
    """What the dispatcher knows about one message when it ends: input to encode_result."""

    msg: OutboundSms
    received_at: float
    route: str | None = None
    provider: str | None = None
    encoding: str | None = None
    segments: int | None = None
    attempts: int = 0
    submitted_at: float | None = None
    # set when smart encoding rewrote the text: the encoding and segments of the text as written
    original_encoding: str | None = None
    original_segments: int | None = None


def encode_correlation(client_message_id: str, provider: str, route: str | None, recipient: dict[str, Any],
                       metadata: dict[str, Any], provider_message_id: str | None, provider_request_id: str | None,
                       submitted_at: str, expires_at: str | None, final_state: str | None = None,
                       last_state: str | None = None) -> bytes:
    """One ``sms.correlation`` value (``Correlation.encode``; the dispatcher encodes its fields
    directly, without the dataclass)."""
    return orjson.dumps({
        "schema_version": SCHEMA_VERSION, "client_message_id": client_message_id,
        "provider": provider, "route": route, "recipient": recipient, "metadata": metadata,
        "provider_message_id": provider_message_id, "provider_request_id": provider_request_id,
        "submitted_at": submitted_at, "expires_at": expires_at,
        "final_state": final_state, "last_state": last_state,
    })


@dataclass(frozen=True, slots=True)
class Correlation:
    """One ``sms.correlation`` record (key: the correlation key): what a receipt for this
    provider id is joined with. ``final_state`` / ``last_state`` are filled by the correlator."""

    client_message_id: str
    provider: str
    route: str | None
    recipient: dict[str, Any]
    metadata: dict[str, Any]
    provider_message_id: str | None
    provider_request_id: str | None
    submitted_at: str
    expires_at: str | None
    final_state: str | None = None
    last_state: str | None = None

    def encode(self) -> bytes:
        return encode_correlation(self.client_message_id, self.provider, self.route, self.recipient, self.metadata,
                                  self.provider_message_id, self.provider_request_id, self.submitted_at,
                                  self.expires_at, self.final_state, self.last_state)

    @classmethod
    def decode(cls, value: bytes) -> Correlation:
        """The correlation in a stored value; InvalidRecord when it cannot be read."""
        try:
            d = orjson.loads(value)
            return cls(client_message_id=d["client_message_id"], provider=d["provider"], route=d.get("route"),
                       recipient=d.get("recipient") or {}, metadata=d.get("metadata") or {},
                       provider_message_id=d.get("provider_message_id"),
                       provider_request_id=d.get("provider_request_id"), submitted_at=d["submitted_at"],
                       expires_at=d.get("expires_at"), final_state=d.get("final_state"),
                       last_state=d.get("last_state"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidRecord(f"unreadable correlation: {type(exc).__name__}") from None

    def age_s(self, now: float) -> float:
        """Seconds since the message was submitted (0 when the time cannot be read)."""
        try:
            return now - datetime.fromisoformat(self.submitted_at).timestamp()
        except (ValueError, TypeError):
            return 0.0


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One ``sms.delivery`` record (key: client_message_id): a receipt as it was read from
    ``sms.receipts`` (every field kept, byte for byte) joined to its ``Correlation``."""

    receipt: dict[str, Any]
    correlation: Correlation
    latency_s: float | None

    @classmethod
    def join(cls, receipt: dict[str, Any], corr: Correlation) -> DeliveryEvent:
        latency = None
        try:
            if corr.submitted_at:
                latency = round(datetime.fromisoformat(receipt["received_at"]).timestamp()
                                - datetime.fromisoformat(corr.submitted_at).timestamp(), 3)
        except (KeyError, ValueError):
            latency = None
        return cls(receipt, corr, latency)

    @property
    def key(self) -> bytes:
        return self.correlation.client_message_id.encode()

    def as_json(self) -> dict[str, Any]:
        c = self.correlation
        return {**self.receipt, "client_message_id": c.client_message_id, "metadata": c.metadata or {},
                "route": c.route, "recipient": c.recipient or {}, "submitted_at": c.submitted_at,
                "latency_s": self.latency_s}

    def encode(self) -> bytes:
        return orjson.dumps(self.as_json())


def _ended(o: SendFacts, outcome: Ending) -> dict[str, Any]:
    """The fields every terminal record starts with, in the schemas' order."""
    msg = o.msg
    return {
        "schema_version": SCHEMA_VERSION,
        "outcome": outcome.value,
        "client_message_id": msg.client_message_id,
        "recipient": msg.recipient.as_json(),
        "recipient_region": msg.recipient.region,
        "metadata": msg.metadata,
        "route": o.route,
        "provider": o.provider,
    }


def encode_accepted(o: SendFacts, accepted: Accepted, completed_at: float) -> bytes:
    record = _ended(o, Ending.ACCEPTED)
    record.update({
        "provider_message_id": accepted.provider_message_id,
        "provider_request_id": accepted.provider_request_id,
        "encoding": o.encoding,
        "segments": o.segments,
        "attempts": o.attempts,
        "received_at": iso(o.received_at),
        "submitted_at": iso(o.submitted_at if o.submitted_at is not None else completed_at),
        "completed_at": iso(completed_at),
    })
    if accepted.details:
        record["provider_details"] = accepted.details
    _add_original(record, o)
    return orjson.dumps(record)


def encode_failed(o: SendFacts, reason: str, error: str, completed_at: float, *,
                  provider_code: str | None = None, provider_text: str | None = None) -> bytes:
    record = _ended(o, Ending.FAILED)
    record.update({
        "reason": reason,
        "error": error,
        "provider_code": provider_code,
        "provider_text": provider_text,
        "provider_message_id": None,
        "encoding": o.encoding,
        "segments": o.segments,
        "attempts": o.attempts,
        "received_at": iso(o.received_at),
        "completed_at": iso(completed_at),
    })
    _add_original(record, o)
    return orjson.dumps(record)


def _add_original(record: dict[str, Any], o: SendFacts) -> None:
    """Smart encoding's trace: what the text as written would have cost (absent when unchanged)."""
    if o.original_segments is not None:
        record["original_encoding"] = o.original_encoding
        record["original_segments"] = o.original_segments


# --- inbound records: delivery receipts, MO messages, opt-out changes -------------------------
#
# The callback endpoint and the pollers turn provider payloads into these values; the correlator
# joins receipts to their outbound message. Every record keeps the provider's
# raw payload (credentials removed) so nothing the provider said is lost.
#
# Stable ids: a receipt's ``event_id`` and an MO's ``dedupe_key`` are hashes of what the provider
# said (not of when we heard it), so a provider's resend, a poller's re-read after a restart, or a
# replay gives the same id and consumers (and the connector itself) can drop duplicates.

# kinds and states are enumerated in topics/schemas/delivery_receipt.json (the contract)
FINAL_STATES = frozenset({"delivered", "undeliverable", "expired", "rejected", "completed"})

def correlation_key(provider: str, provider_id: str) -> str:
    """What joins a receipt to its accepted message: ``<provider>:<provider message/request id>``."""
    return f"{provider}:{provider_id}"


def stable_id(*parts: object) -> str:
    basis = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    provider: str
    correlation_key: str
    kind: str
    state: str
    received_at: float
    raw: str
    raw_format: str = "xml"
    provider_message_id: str | None = None
    provider_request_id: str | None = None
    device_kind: str | None = None
    device_id: str | None = None
    provider_status: str | None = None
    occurred_at: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def event_id(self) -> str:
        return stable_id(self.correlation_key, self.kind, self.state, self.provider_status,
                         self.device_kind, self.device_id, self.occurred_at)

    def as_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": self.event_id,
            "provider": self.provider,
            "correlation_key": self.correlation_key,
            "provider_message_id": self.provider_message_id,
            "provider_request_id": self.provider_request_id,
            "device": {"kind": self.device_kind, "id": self.device_id} if self.device_id else None,
            "kind": self.kind,
            "state": self.state,
            "final": self.final,
            "provider_status": self.provider_status,
            "occurred_at": self.occurred_at,
            "received_at": iso(self.received_at),
            "raw": self.raw,
            "raw_format": self.raw_format,
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.as_json())


@dataclass(frozen=True, slots=True)
class InboundSms:
    provider: str
    sender: Recipient
    text: str
    received_at: float
    raw: str
    dedupe_key: str
    to: str | None = None
    keyword: str | None = None
    occurred_at: str | None = None
    optout: str | None = None       # "stop" | "start" | None

    def encode(self) -> bytes:
        return orjson.dumps({
            "schema_version": SCHEMA_VERSION,
            "dedupe_key": self.dedupe_key,
            "provider": self.provider,
            "sender": self.sender.as_json(),
            "to": self.to,
            "text": self.text,
            "keyword": self.keyword,
            "optout": self.optout,
            "occurred_at": self.occurred_at,
            "received_at": iso(self.received_at),
            "raw": self.raw,
        })

    @property
    def key(self) -> bytes:
        return self.sender.key().encode()


@dataclass(frozen=True, slots=True)
class OptOutChange:
    phone: str
    opted_out: bool
    at: float
    source: str
    keyword: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps({"schema_version": SCHEMA_VERSION, "phone": self.phone, "opted_out": self.opted_out,
                             "keyword": self.keyword, "source": self.source, "at": iso(self.at)})
