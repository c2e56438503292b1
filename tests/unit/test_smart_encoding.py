"""Smart encoding (connector.encoding.smart_encode, LOOKALIKES): tables and properties."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.encoding import (
    GSM7_BASIC_TABLE,
    GSM7_EXTENSION_CHARS,
    LOOKALIKES,
    Encoding,
    analyse,
    detect,
    smart_encode,
)

GSM7, UCS2 = Encoding.GSM7, Encoding.UCS2
GSM_CHARS = (set(GSM7_BASIC_TABLE) - {"\x1b"}) | set(GSM7_EXTENSION_CHARS)
EMOJI = "\U0001f600"


# --- the table ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ch", sorted(LOOKALIKES))
def test_every_lookalike_forces_ucs2_and_its_replacement_is_gsm7(ch: str) -> None:
    assert detect(ch) is UCS2
    assert all(c in GSM_CHARS for c in LOOKALIKES[ch])


def test_no_letter_or_digit_is_ever_replaced() -> None:
    # modifier letters (Lm) drawn as punctuation are the exception: U+02BC is the apostrophe
    for ch in LOOKALIKES:
        category = unicodedata.category(ch)
        assert category == "Lm" or not category.startswith(("L", "N")), f"U+{ord(ch):04X} is a letter or digit"


@pytest.mark.parametrize(("text", "sent"), [
    ("Don\u2019t", "Don't"),
    ("\u2018single\u2019 \u201cdouble\u201d \u201elow\u201c", "'single' \"double\" \"low\""),
    ("5\u20328\u2033 tall", "5'8\" tall"),
    ("9\u201318 \u2014 open \u2012 \u2010 \u2011 \u2212 \u2015", "9-18 - open - - - - -"),
    ("wait\u2026", "wait..."),
    ("a\u00a0b\u2009c\u202fd\u3000e\u2002f", "a b c d e f"),
    ("soft\u00adhyphen zero\u200bwidth\ufeff", "softhyphen zerowidth"),
    ("\u2022 one\u2028\u2022 two", "- one\n- two"),
    ("1\u20442 and x\u02c6y z\u02dc", "1/2 and x^y z~"),
    ("`code`", "'code'"),
    ("caf\u00e9 \u201cok\u201d", "caf\u00e9 \"ok\""),            # é is GSM-7: the quotes were the only obstacle
])
def test_lookalikes_are_replaced(text: str, sent: str) -> None:
    smart = smart_encode(text)
    assert smart is not None and smart.text == sent
    assert smart.encoded.encoding is GSM7 and smart.original.encoding is UCS2
    assert smart.encoded == analyse(sent) and smart.original == analyse(text)


@pytest.mark.parametrize("text", [
    "plain GSM-7 text [with] {extension} \u20ac",                 # nothing to do
    "\u201cHello\u201d " + EMOJI,                                  # an emoji has no look-alike
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u2014 \u201ccode\u201d",  # Cyrillic
    "\u60a8\u7684\u9a8c\u8bc1\u7801 \u2026",                       # Chinese
    "Ma\u00f1ana \u00e1 las 10 \u2019",                            # á is not GSM-7 (ñ is)
    "\u00ab guillemets \u00bb",                                    # deliberately not in the table
    "\u200b",                                                      # nothing would be left to send
])
def test_a_text_that_needs_ucs2_for_real_characters_is_untouched(text: str) -> None:
    assert smart_encode(text) is None


def test_160_characters_with_one_curly_quote_go_from_3_segments_to_1() -> None:
    text = "It\u2019s " + "x" * 155
    smart = smart_encode(text)
    assert smart is not None
    assert (smart.original.segments, smart.encoded.segments, smart.segments_saved) == (3, 1, 2)
    assert smart.replaced == 1


def test_extension_characters_count_two_septets() -> None:
    # 79 small tildes: 79 UCS-2 units (2 segments), 158 septets as "~" (1 segment)
    smart = smart_encode("\u02dc" * 79)
    assert smart is not None and smart.encoded.units == 158 and smart.encoded.segments == 1
    # 80 of them: 160 septets is still one GSM-7 segment; 81: 162 septets, two parts of 153
    assert smart_encode("\u02dc" * 81).encoded.segments == 2          # type: ignore[union-attr]


def test_an_ellipsis_that_would_add_a_segment_is_not_replaced() -> None:
    text = "\u2026" * 60                          # UCS-2: 60 units, 1 segment; GSM-7: 180 septets, 2
    assert analyse(text).segments == 1
    assert smart_encode(text) is None
    assert smart_encode("\u2026" * 50) is not None  # 150 septets: 1 segment either way


def test_equal_segments_still_send_gsm7() -> None:
    # no segment saved, but GSM-7 reaches routes that cannot send UCS-2 (ThingSpace 7-bit)
    smart = smart_encode("Don\u2019t")
    assert smart is not None and smart.segments_saved == 0


# --- properties ---------------------------------------------------------------------------------

_lookalike = st.sampled_from(sorted(LOOKALIKES))
_gsm = st.sampled_from(sorted(GSM_CHARS))
_other = st.characters(blacklist_characters=sorted(set(LOOKALIKES) | GSM_CHARS), blacklist_categories=("Cs",))
_mixed = st.lists(st.one_of(_gsm, _lookalike), max_size=400).map("".join)


@settings(max_examples=300)
@given(_mixed)
def test_property_a_replaced_text_is_gsm7_and_never_costs_more(text: str) -> None:
    smart = smart_encode(text)
    original = analyse(text)
    if smart is None:
        # untouched only when there was nothing to do, nothing would be left, or it would cost more
        assert (original.encoding is GSM7 or not text.translate(str.maketrans(LOOKALIKES))
                or analyse(text.translate(str.maketrans(LOOKALIKES))).segments > original.segments)
        return
    assert detect(smart.text) is GSM7 and smart.encoded == analyse(smart.text)
    assert smart.encoded.segments <= original.segments
    assert smart.original == original and smart.segments_saved >= 0
    assert smart.replaced == sum(1 for c in text if c in LOOKALIKES) > 0


@settings(max_examples=300)
@given(_mixed, _other, st.integers(min_value=0, max_value=400))
def test_property_one_character_without_a_lookalike_leaves_the_text_untouched(text: str, other: str,
                                                                              at: int) -> None:
    at = min(at, len(text))
    assert smart_encode(text[:at] + other + text[at:]) is None


@given(st.text(max_size=300))
def test_property_any_text(text: str) -> None:
    smart = smart_encode(text)
    if smart is not None:
        assert detect(text) is UCS2 and detect(smart.text) is GSM7
        assert smart.encoded.segments <= analyse(text).segments
        kept = [c for c in text if c not in LOOKALIKES]
        assert all(c in GSM_CHARS for c in kept)


# --- the records --------------------------------------------------------------------------------

def test_records_carry_the_original_cost_only_when_the_text_was_rewritten() -> None:
    import jsonschema
    import orjson

    from connector import contract as topics
    from connector.records import Accepted, OutboundSms, Recipient, SendFacts, encode_accepted, encode_failed

    msg = OutboundSms(client_message_id="m-1", recipient=Recipient(phone="+14155550100"), text="x")
    plain = SendFacts(msg=msg, received_at=1.0, route="r", provider="smpp_rest", encoding="gsm7", segments=1)
    smart = SendFacts(msg=msg, received_at=1.0, route="r", provider="smpp_rest", encoding="gsm7", segments=1,
                      original_encoding="ucs2", original_segments=3)
    for o, original in ((plain, None), (smart, ("ucs2", 3))):
        accepted = orjson.loads(encode_accepted(o, Accepted("id-1"), 2.0))
        failed = orjson.loads(encode_failed(o, "blocked-destination", "no", 2.0))
        jsonschema.validate(accepted, topics.schema("accepted_sms.json"))
        jsonschema.validate(failed, topics.schema("failed_sms.json"))
        for rec in (accepted, failed):
            if original:
                assert (rec["original_encoding"], rec["original_segments"]) == original
            else:
                assert "original_encoding" not in rec and "original_segments" not in rec
