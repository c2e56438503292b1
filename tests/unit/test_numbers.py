"""The one canonical recipient (connector.numbers): what is accepted, how it is shown, what is
refused and why; property tests that no string gets through in any other form."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import numbers
from connector.errors import InvalidMessage
from connector.records import OutboundSms, Recipient, decode_outbound, encode_outbound
from connector.routing import Router
from connector.config import RoutingSettings

E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@pytest.mark.parametrize("text, e164, region", [
    ("+14155550123", "+14155550123", "US"),
    ("+1 415 555 0123", "+14155550123", "US"),
    ("+1 (415) 555-0123", "+14155550123", "US"),
    ("+1.415.555.0123", "+14155550123", "US"),
    ("+1/415/555/0123", "+14155550123", "US"),
    ("  +14155550123 ", "+14155550123", "US"),          # plain spaces around: formatting
    ("+18504700000", "+18504700000", "US"),              # Rev.io seed's ToNumber
    ("+44 20 7183 8750", "+442071838750", "GB"),
    ("+58 212 555 0123", "+582125550123", "VE"),
    ("+16135550123", "+16135550123", "CA"),              # +1 is shared: the region says which country
    ("+80012345678", "+80012345678", None),              # non-geographic (international freephone)
])
def test_accepted_forms_become_one_e164(text: str, e164: str, region: str | None) -> None:
    n = numbers.parse(text)
    assert (n.e164, n.region) == (e164, region)


@pytest.mark.parametrize("text, why", [
    ("+14155550123\n", "control or invisible character (U+000A"),
    ("+14155550123\r", "control or invisible character (U+000D"),
    ("+14155550123\x00", "control or invisible character (U+0000"),
    ("+1\t4155550123", "control or invisible character (U+0009"),
    ("+1415555\u200b0123", "control or invisible character (U+200B ZERO WIDTH SPACE"),
    ("\u202d+14155550123", "control or invisible character (U+202D"),
    ("\ufeff+14155550123", "control or invisible character (U+FEFF"),
    ("+1\u00a04155550123", "whitespace other than a plain space (U+00A0"),
    ("+1\u20094155550123", "whitespace other than a plain space (U+2009"),
    ("+\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff12\uff13", "not an ASCII digit"),
    ("+1415555\u0660123", "not an ASCII digit 0-9 (U+0660 ARABIC-INDIC DIGIT ZERO"),
    ("+1415555O123", "a letter"),                       # letter O for zero
    ("+1415555l123", "a letter"),                       # letter l for one
    ("+1-800-FLOWERS", "a letter"),                     # vanity numbers are not guessed
    ("14155550123", "must be E.164"),
    ("4155550123", "must be E.164"),
    ("+1415+5550123", "'+' that does not start"),
    ("", "must be E.164"),
    ("+", "not a phone number"),
    ("+1415555", "not a possible number: TOO_SHORT"),
    ("+141555501234567", "TOO_LONG"),
    ("+99912345678", "INVALID_COUNTRY_CODE"),
    ("+1 415 555 0123 ext 4", "a letter"),
])
def test_refused_forms_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        numbers.parse(text)
    assert why in err.value.message and err.value.field == "recipient.phone"
    assert err.value.reason == "invalid"


def test_validation_levels() -> None:
    unallocated = numbers.parse("+15551234567")          # 555 is no area code: possible, not valid
    assert unallocated.e164 == "+15551234567" and not unallocated.valid
    assert numbers.check(unallocated, "possible") is unallocated
    with pytest.raises(InvalidMessage, match="not a valid number: NOT_IN_NUMBER_PLAN"):
        numbers.check(unallocated, "valid")
    assert numbers.check(numbers.parse("+14155550123"), "valid").valid
    assert numbers.DEFAULT_LEVEL == "possible"


def test_number_type_and_provider_forms() -> None:
    n = numbers.parse("+1 (850) 470-0000")
    assert (n.digits, n.nanp10()) == ("18504700000", "8504700000")
    assert numbers.parse("+447400123456").number_type == "mobile"
    assert numbers.parse("+14155550123").number_type == "fixed-line-or-mobile"
    with pytest.raises(InvalidMessage, match=r"\(\+1\) numbers only"):
        numbers.parse("+447700900123").nanp10()


@pytest.mark.parametrize("text, form, e164", [
    ("8504700000", "nanp10", "+18504700000"),      # Rev.io TN / ThingSpace MDN
    ("18504700000", "nanp10", "+18504700000"),
    ("+18504700000", "nanp10", "+18504700000"),
    ("850470000", "nanp10", None),
    ("14155550123", "digits", "+14155550123"),     # SMPP `to`, Ogangi `from`
    ("+14155550123", "digits", "+14155550123"),
    (" 584121234567\n", "digits", "+584121234567"),   # around a provider's value: tolerated
    ("5841212\n34567", "digits", None),               # inside: never
    ("shortcode", "digits", None),
    ("24365", "digits", None),
    (None, "digits", None),
    ("+1 415 555 0123", "e164", "+14155550123"),
])
def test_from_provider(text: str | None, form: str, e164: str | None) -> None:
    assert numbers.from_provider(text, form) == e164


def test_recipient_e164_covers_phones_and_devices_addressed_by_number() -> None:
    assert Recipient(phone="+1 415 555 0123").e164 == "+14155550123"
    assert Recipient(device_kind="MDN", device_id="4155550123").e164 == "+14155550123"
    assert Recipient(device_kind="MSISDN", device_id="14155550123").e164 == "+14155550123"
    assert Recipient(device_kind="IMEI", device_id="990000862471854").e164 is None
    assert Recipient(phone="+14155550123\n").e164 is None
    assert Recipient(phone="+16135550123").region == "CA"


def test_decode_stores_the_canonical_number_and_keeps_a_bad_one_as_given() -> None:
    clean = decode_outbound(b'{"client_message_id":"a","recipient":{"phone":"+1 (415) 555-0123"},"text":"hi"}')
    assert clean.recipient.phone == "+14155550123"
    bad = decode_outbound(b'{"client_message_id":"a","recipient":{"phone":"+14155550123\\n"},"text":"hi"}')
    assert bad.recipient.phone == "+14155550123\n"     # failed later, reason invalid, as given
    with pytest.raises(InvalidMessage, match="control"):
        bad.recipient.number()


def test_prefix_routes_compare_canonical_numbers() -> None:
    router = Router.from_settings(RoutingSettings(prefix_routes="+1 415=sf,+1=us", default_route="other"),
                                  {"sf": "smpp_rest", "us": "revio", "other": "ogangi"})
    msg = decode_outbound(encode_outbound(OutboundSms("a", Recipient(phone="+1 (415) 555-0123"), "hi")))
    assert router.choose(msg) == "sf"
    mdn = OutboundSms("b", Recipient(device_kind="MDN", device_id="4155550123"), "hi")
    assert router.choose(mdn) == "other"      # devices: device_route, else the default


# --------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=400)
@given(st.text(max_size=40))
def test_any_string_gives_one_e164_or_a_reason(text: str) -> None:
    try:
        n = numbers.parse(text)
    except InvalidMessage as exc:
        assert exc.reason == "invalid" and exc.message.startswith("recipient.phone")
        return
    assert E164.fullmatch(n.e164)
    assert all(unicodedata.category(ch)[0] not in "CZ" for ch in text if ch != " ")
    assert numbers.parse(n.e164) == n                      # canonical is a fixed point


_CANONICAL = st.sampled_from(["+14155550123", "+18504700000", "+442071838750", "+582125550123",
                              "+5511987654321", "+33612345678", "+819012345678", "+61412345678"])
_FORMATTING = st.sampled_from(sorted(numbers.FORMATTING))
_UNWANTED = st.characters(categories=("Cc", "Cf", "Zl", "Zp", "Nd", "No", "Lu", "Ll"),
                          exclude_characters="0123456789")


@given(_CANONICAL, st.lists(st.tuples(st.integers(0, 20), _FORMATTING), max_size=6))
def test_formatting_never_changes_the_number(e164: str, inserts: list[tuple[int, str]]) -> None:
    text = e164
    for pos, ch in inserts:
        pos = max(1, min(pos, len(text)))           # after the '+'
        text = text[:pos] + ch + text[pos:]
    assert numbers.parse(text).e164 == e164


@given(_CANONICAL, st.integers(0, 20), _UNWANTED)
def test_a_control_character_lookalike_digit_or_letter_never_gets_through(e164: str, pos: int,
                                                                           ch: str) -> None:
    pos = min(pos, len(e164))
    with pytest.raises(InvalidMessage):
        numbers.parse(e164[:pos] + ch + e164[pos:])
    assert numbers.canonical(e164[:pos] + ch + e164[pos:]) is None


@pytest.mark.parametrize("text", ["0+", "1+2", "+1+4155550123", "++14155550123"])
def test_a_plus_inside_the_number_is_refused_naming_the_field(text: str) -> None:
    # found by the property above (hypothesis: "0+"): every refusal names recipient.phone
    with pytest.raises(InvalidMessage, match=r"^recipient\.phone has a '\+' that does not start the number"):
        numbers.parse(text)
