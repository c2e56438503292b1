"""Inbound record types: delivery receipts, joined delivery events, MO messages, opt-outs.

The callback endpoint and the pollers turn provider payloads into these values; the correlator
joins receipts to their outbound message. Each type has one encoder, validated against its JSON
Schema in ``topics/schemas`` by the tests. Every record keeps the provider's raw payload (with
credentials removed) so nothing the provider said is lost.

Stable ids: a receipt's ``event_id`` and an MO's ``dedupe_key`` are hashes of what the provider
said (not of when we heard it), so a provider's resend, a poller's re-read after a restart, or a
replay gives the same id and consumers (and the connector itself) can drop duplicates.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from connector.records import SCHEMA_VERSION, Recipient, iso

# kinds and states are enumerated in topics/schemas/delivery_receipt.json (the contract)
FINAL_STATES = frozenset({"delivered", "undeliverable", "expired", "rejected", "completed"})

DEFAULT_STOP_WORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")
DEFAULT_START_WORDS = ("START", "UNSTOP")


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


_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Keywords:
    """Opt-out / opt-in keywords (configurable); matched on the whole text, case-insensitive."""

    stop: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_STOP_WORDS))
    start: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_START_WORDS))

    @classmethod
    def parse(cls, stop: Iterable[str] | str, start: Iterable[str] | str) -> Keywords:
        def words(v: Iterable[str] | str) -> frozenset[str]:
            items = v.split(",") if isinstance(v, str) else v
            return frozenset(w.strip().upper() for w in items if w.strip())
        return cls(words(stop), words(start))

    def classify(self, text: str) -> str | None:
        """``stop``, ``start`` or None: the text must be the keyword alone (punctuation allowed),
        as carriers do, so 'please stop by' does not opt anyone out."""
        words = _WORD.findall(text or "")
        if len(words) != 1:
            return None
        word = words[0].upper()
        if word in self.stop:
            return "stop"
        if word in self.start:
            return "start"
        return None


def first_word(text: str) -> str | None:
    m = _WORD.search(text or "")
    return m.group(0).upper() if m else None
