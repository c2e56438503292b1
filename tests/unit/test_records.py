"""records: decoding outbound bytes, and the wire form of terminal records against the schemas."""

from __future__ import annotations

from typing import Any, Callable

import fastjsonschema
import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import contract as topics
from connector import records
from connector.errors import InvalidMessage, InvalidRecord
from connector.records import (Accepted, OutboundSms, SendFacts, Recipient, decode_outbound,
                               encode_accepted, encode_failed, encode_outbound)

GOOD = {"client_message_id": "m-1", "recipient": {"phone": "+14155550100"}, "text": "hi",
        "metadata": {"campaign": "x", "n": 1}}


def dumps(d: object) -> bytes:
    return orjson.dumps(d)


def test_decodes_a_minimal_record() -> None:
    msg = decode_outbound(dumps(GOOD))
    assert msg.client_message_id == "m-1"
    assert msg.recipient == Recipient(phone="+14155550100")
    assert msg.metadata == {"campaign": "x", "n": 1}
    assert msg.expires_at is None


def test_decodes_device_recipient_case_insensitively() -> None:
    msg = decode_outbound(dumps({**GOOD, "recipient": {"device": {"kind": "imei", "id": "990000862471854"}}}))
    assert msg.recipient.device_kind == "IMEI" and msg.recipient.is_device


def test_expires_at_is_parsed_with_zone() -> None:
    msg = decode_outbound(dumps({**GOOD, "expires_at": "2030-01-01T00:00:00Z"}))
    assert msg.expires_at == 1893456000.0


@pytest.mark.parametrize("value, field", [
    (None, None),
    (b"", None),
    (b"not json", None),
    (b"\xff\xfe", None),
    (b"[1,2]", None),
    (dumps({**GOOD, "text": 42}), "text"),
    (dumps({k: v for k, v in GOOD.items() if k != "client_message_id"}), None),
    (dumps({**GOOD, "client_message_id": "has space"}), "client_message_id"),
    (dumps({**GOOD, "client_message_id": ""}), "client_message_id"),
    (dumps({**GOOD, "recipient": {"phone": "+1", "device": {"kind": "IMEI", "id": "1"}}}), "recipient"),
    (dumps({**GOOD, "recipient": {"device": {"kind": "FAX", "id": "1"}}}), "recipient.device.kind"),
    (dumps({**GOOD, "extra": 1}), None),
    (dumps({**GOOD, "text": "x" * 10001}), "text"),
    (dumps({**GOOD, "expires_at": "tomorrow"}), "expires_at"),
    (dumps({**GOOD, "expires_at": "2030-01-01T00:00:00"}), "expires_at"),
])
def test_invalid_records_say_what_is_wrong(value: bytes | None, field: str | None) -> None:
    with pytest.raises(InvalidRecord) as err:
        decode_outbound(value)
    assert err.value.message
    if field:
        assert err.value.field == field


def test_encode_outbound_round_trips() -> None:
    msg = OutboundSms(client_message_id="a", recipient=Recipient(device_kind="IMEI", device_id="1"), text="t",
                      route="r", sender="s", expires_at=1893456000.0, options={"x": {"y": 1}}, metadata={"k": "v"})
    assert decode_outbound(encode_outbound(msg)) == msg


def test_terminal_records_match_their_schemas() -> None:
    o = SendFacts(msg=decode_outbound(dumps(GOOD)), received_at=1.0, route="smpp", provider="smpp_rest",
                encoding="gsm7", segments=1, attempts=2, submitted_at=2.0)
    accepted = orjson.loads(encode_accepted(o, Accepted("api-1", details={"profile": 1}), 3.0))
    failed = orjson.loads(encode_failed(o, "rejected", "no", 3.0, provider_code="E1", provider_text="bad"))
    jsonschema.validate(accepted, topics.schema("accepted_sms.json"))
    jsonschema.validate(failed, topics.schema("failed_sms.json"))
    assert accepted["metadata"] == GOOD["metadata"] and accepted["received_at"] == "1970-01-01T00:00:01.000Z"
    assert failed["reason"] == "rejected" and failed["provider_code"] == "E1"


def test_failed_record_without_route_matches_schema() -> None:
    o = SendFacts(msg=decode_outbound(dumps(GOOD)), received_at=1.0)
    jsonschema.validate(orjson.loads(encode_failed(o, "invalid", "no route", 2.0)), topics.schema("failed_sms.json"))


def test_smart_encodings_original_fields_come_together_in_the_schemas() -> None:
    """original_encoding and original_segments are written together (records._add_original), so
    the schemas require one with the other: an analytics job may read both once it sees one."""
    o = SendFacts(msg=decode_outbound(dumps(GOOD)), received_at=1.0, route="smpp", provider="smpp_rest",
                  encoding="gsm7", segments=1, attempts=1, original_encoding="ucs2", original_segments=3)
    for role, record in (("accepted", orjson.loads(encode_accepted(o, Accepted("api-1"), 2.0))),
                         ("failed", orjson.loads(encode_failed(o, "budget", "over budget", 2.0)))):
        schema = topics.schema(f"{role}_sms.json")
        jsonschema.validate(record, schema)
        for alone in ("original_encoding", "original_segments"):
            half = {k: v for k, v in record.items() if k != alone}
            with pytest.raises(jsonschema.ValidationError, match=alone):
                jsonschema.validate(half, schema)


@pytest.mark.parametrize("phone, ok", [("+14155550100", True), ("+442071838750", True), ("14155550100", False),
                                       ("+0123456789", False), ("+1415", False), ("+1415555010012345", False)])
def test_e164(phone: str, ok: bool) -> None:
    r = Recipient(phone=phone)
    if ok:
        assert r.require_e164() == phone
    else:
        with pytest.raises(InvalidMessage):
            r.require_e164()


def test_masked_never_shows_the_whole_number() -> None:
    assert "5550100" not in Recipient(phone="+14155550100").masked()


def test_decodes_a_device_selection() -> None:
    sel = {"group_name": "meters", "custom_fields": [{"key": "CustomField2", "value": "north"}]}
    msg = decode_outbound(dumps({**GOOD, "recipient": {"selection": sel}}))
    assert msg.recipient.selection == sel and msg.recipient.is_device
    assert msg.recipient.as_json() == {"selection": sel} and msg.recipient.key() == "selection:group_name=meters"


@pytest.mark.parametrize("sel", [{}, {"group_name": ""}, {"custom_fields": [{"key": "CustomField9", "value": "x"}]},
                                 {"color": "red"}])
def test_bad_selections_are_dead_letters(sel: dict[str, object]) -> None:
    with pytest.raises(InvalidRecord):
        decode_outbound(dumps({**GOOD, "recipient": {"selection": sel}}))


@pytest.mark.parametrize("ts", [0.0, 1.0, 1.999, 1700000000.123, 1893456000.5, 1893456000.0009])
def test_iso_matches_the_standard_library(ts: float) -> None:
    from datetime import datetime, timezone

    from connector.records import iso

    expected = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso(ts) == expected


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70))
_DEVICE = st.fixed_dictionaries({}, optional={"kind": st.sampled_from(["IMEI", "", "x" * 20, 7]),
                                              "id": st.sampled_from(["123", "", "9" * 70]),
                                              "extra": _SCALARS})
_SELECTION = st.fixed_dictionaries({}, optional={
    "account_name": st.sampled_from(["acct", "", 5]), "group_name": st.text(max_size=70),
    "custom_fields": st.lists(st.fixed_dictionaries({"key": st.sampled_from(["CustomField1", "Other"]),
                                                     "value": st.sampled_from(["v", ""])}), max_size=6),
    "other": _SCALARS})
_RECIPIENT = st.one_of(
    _SCALARS,
    st.fixed_dictionaries({}, optional={"phone": st.one_of(st.sampled_from(["+14155550123", ""]), _SCALARS),
                                        "device": st.one_of(_DEVICE, _SCALARS),
                                        "selection": st.one_of(_SELECTION, _SCALARS),
                                        "email": _SCALARS}))


@settings(max_examples=600)
@given(_RECIPIENT)
def test_narrowed_validation_accepts_exactly_what_the_schema_accepts(recipient: object) -> None:
    doc = {"schema_version": 1, "client_message_id": "m-1", "recipient": recipient, "text": "hi"}

    def verdict(validate: Callable[[dict[str, Any]], object]) -> bool:
        try:
            validate(doc)
            return True
        except fastjsonschema.JsonSchemaException:
            return False

    assert verdict(records.validate_outbound) == verdict(records._validate_outbound)


CORRELATION = records.Correlation(
    client_message_id="m-1", provider="ogangi", route="og", recipient={"phone": "+14155550100"},
    metadata={"campaign": "x"}, provider_message_id="pm-1", provider_request_id=None,
    submitted_at="2026-01-02T03:04:05.000Z", expires_at=None, final_state=None, last_state="in-flight")


def test_a_correlation_reads_back_as_what_was_written() -> None:
    value = CORRELATION.encode()
    assert records.Correlation.decode(value) == CORRELATION
    assert records.Correlation.decode(value).encode() == value
    jsonschema.validate(orjson.loads(value), topics.schema("correlation.json"))


@pytest.mark.parametrize("value", [b"{", b"[]", dumps({"provider": "ogangi"})])
def test_an_unreadable_correlation_is_an_invalid_record(value: bytes) -> None:
    with pytest.raises(InvalidRecord):
        records.Correlation.decode(value)


def test_a_delivery_event_is_the_receipt_byte_for_byte_plus_the_message() -> None:
    receipt = records.DeliveryReceipt(provider="ogangi", correlation_key="ogangi:pm-1", kind="delivery-confirmation",
                                      state="delivered", received_at=1767323050.5, raw="<x/>",
                                      provider_message_id="pm-1")
    read = orjson.loads(receipt.encode())
    event = records.DeliveryEvent.join(read, CORRELATION)
    assert event.latency_s == 5.5 and event.key == b"m-1"
    wire = event.encode()
    assert wire == orjson.dumps({**read, "client_message_id": "m-1", "metadata": {"campaign": "x"}, "route": "og",
                                 "recipient": {"phone": "+14155550100"},
                                 "submitted_at": "2026-01-02T03:04:05.000Z", "latency_s": 5.5})
    jsonschema.validate(orjson.loads(wire), topics.schema("delivery_event.json"))
