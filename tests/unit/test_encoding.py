"""Unit tests for connector.encoding (GSM 03.38 / 3GPP 23.038, 23.040).

Performance (python -m timeit, best of 5, Python 3.11.7, dev container):
  analyse("x" * 160)                          1.08 us  (pure-ASCII fast path)
  analyse(160-char GSM-7 text with é/à/ü)     2.64 us
  analyse(70-char Cyrillic text, UCS-2)       3.74 us
  analyse(200-char ASCII, 1 in 6 is '[')     12.4 us   (multi-part + escapes: greedy cut walk)
Measured with:
  python -m timeit -s "from connector.encoding import analyse; t='x'*160" "analyse(t)"
No timing assertion here (CI machines vary); re-measure after changing _measure.
"""

from __future__ import annotations

import dataclasses
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.encoding import (
    GSM7_BASIC_TABLE,
    GSM7_EXTENSION_CHARS,
    LIMITS,
    EncodedText,
    Encoding,
    analyse,
    analyse_bytes,
    detect,
    gsm7_septets,
    split,
)

GSM7, UCS2, BINARY = Encoding.GSM7, Encoding.UCS2, Encoding.BINARY
EMOJI = "\U0001f600"  # 😀, outside the BMP: a surrogate pair in UTF-16
CYR = "ж"  # BMP, not GSM-7


def _units(part: str, encoding: Encoding) -> int:
    if encoding is GSM7:
        return gsm7_septets(part)
    if encoding is UCS2:
        return len(part.encode("utf-16-le")) // 2
    return len(part.encode("utf-8"))


# --- the alphabet itself -----------------------------------------------------


def test_basic_table_is_128_distinct_code_points_with_esc_at_0x1b():
    assert len(GSM7_BASIC_TABLE) == 128
    assert len(set(GSM7_BASIC_TABLE)) == 128
    assert GSM7_BASIC_TABLE[0x1B] == "\x1b"


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0x00, "COMMERCIAL AT"),
        (0x09, "LATIN CAPITAL LETTER C WITH CEDILLA"),
        (0x10, "GREEK CAPITAL LETTER DELTA"),
        (0x12, "GREEK CAPITAL LETTER PHI"),
        (0x1A, "GREEK CAPITAL LETTER XI"),
        (0x24, "CURRENCY SIGN"),
        (0x40, "INVERTED EXCLAMATION MARK"),
        (0x5F, "SECTION SIGN"),
        (0x60, "INVERTED QUESTION MARK"),
        (0x7F, "LATIN SMALL LETTER A WITH GRAVE"),
    ],
)
def test_basic_table_positions(code, name):
    assert unicodedata.name(GSM7_BASIC_TABLE[code]) == name


@pytest.mark.parametrize("ch", [c for c in GSM7_BASIC_TABLE if c != "\x1b"])
def test_every_basic_char_is_gsm7_one_septet(ch):
    assert detect(ch) is GSM7
    assert analyse(ch) == EncodedText(GSM7, 1, 1)


@pytest.mark.parametrize("ch", list(GSM7_EXTENSION_CHARS))
def test_every_extension_char_is_gsm7_two_septets(ch):
    assert detect(ch) is GSM7
    assert analyse(ch) == EncodedText(GSM7, 2, 1)


# --- detect --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", GSM7),
        ("hello", GSM7),
        ("café", GSM7),  # é is in the basic table
        ("Δ", GSM7),
        ("Ça va", GSM7),  # capital C-cedilla is 0x09
        ("ça va", UCS2),  # lowercase c-cedilla is not in GSM-7
        ("price: 5€", GSM7),
        ("a`b", UCS2),  # backtick is ASCII but not GSM-7
        ("tab\there", UCS2),
        ("\x1b", UCS2),  # ESC is not a sendable character
        ("\f", GSM7),  # form feed is in the extension table
        ("line\r\nbreak", GSM7),
        ("Привет", UCS2),
        ("hi " + EMOJI, UCS2),
        ("á", UCS2),  # only à/é/è/ì/ò/ù... are in the table
    ],
)
def test_detect(text, expected):
    assert detect(text) is expected
    assert analyse(text).encoding is expected


# --- analyse: units and segments --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", EncodedText(GSM7, 0, 1)),
        ("a" * 160, EncodedText(GSM7, 160, 1)),
        ("a" * 161, EncodedText(GSM7, 161, 2)),
        ("a" * 306, EncodedText(GSM7, 306, 2)),
        ("a" * 307, EncodedText(GSM7, 307, 3)),
        ("é" * 160, EncodedText(GSM7, 160, 1)),
        ("Δ" * 161, EncodedText(GSM7, 161, 2)),
        ("€" * 80, EncodedText(GSM7, 160, 1)),
        ("€" * 81, EncodedText(GSM7, 162, 2)),
        ("[" * 80, EncodedText(GSM7, 160, 1)),  # ASCII extension char
        ("[" * 81, EncodedText(GSM7, 162, 2)),
        ("a" * 158 + "{", EncodedText(GSM7, 160, 1)),
        ("a" * 159 + "{", EncodedText(GSM7, 161, 2)),
        # 306 septets, but '€' cannot straddle the 153 boundary: 152 | € + 151 | a
        ("a" * 152 + "€" + "a" * 152, EncodedText(GSM7, 306, 3)),
        ("a" * 152 + "€" + "a" * 151, EncodedText(GSM7, 305, 2)),
        (CYR * 70, EncodedText(UCS2, 70, 1)),
        (CYR * 71, EncodedText(UCS2, 71, 2)),
        (CYR * 134, EncodedText(UCS2, 134, 2)),
        (CYR * 135, EncodedText(UCS2, 135, 3)),
        ("a" * 69 + "ç", EncodedText(UCS2, 70, 1)),
        ("`" * 71, EncodedText(UCS2, 71, 2)),  # ASCII but UCS-2
        (EMOJI, EncodedText(UCS2, 2, 1)),
        (EMOJI * 35, EncodedText(UCS2, 70, 1)),
        (EMOJI * 36, EncodedText(UCS2, 72, 2)),
        # 134 units, but the emoji cannot straddle the 67 boundary: 66 | 😀 + 65 | 1
        (CYR * 66 + EMOJI + CYR * 66, EncodedText(UCS2, 134, 3)),
        (CYR * 66 + EMOJI + CYR * 65, EncodedText(UCS2, 133, 2)),
    ],
)
def test_analyse(text, expected):
    assert analyse(text) == expected


def test_gsm7_septets():
    assert gsm7_septets("") == 0
    assert gsm7_septets("a€{é") == 6
    with pytest.raises(ValueError, match=r"U\+00E7\) at index 2"):
        gsm7_septets("abç")


@pytest.mark.parametrize(
    ("size", "segments"),
    [(0, 1), (1, 1), (140, 1), (141, 2), (268, 2), (269, 3)],
)
def test_analyse_bytes(size, segments):
    assert analyse_bytes(b"\xff" * size) == EncodedText(BINARY, size, segments)


def test_encoded_text_is_frozen():
    result = analyse("hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.units = 3  # type: ignore[misc]


def test_encoding_values():
    assert [e.value for e in Encoding] == ["gsm7", "ucs2", "8bit"]
    assert Encoding("8bit") is BINARY


# --- split -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "expected_lengths"),
    [
        ("", None, [0]),
        ("a" * 160, None, [160]),
        ("a" * 161, None, [153, 8]),
        ("a" * 307, None, [153, 153, 1]),
        ("€" * 81, None, [76, 5]),  # 76 x 2 = 152 septets; a 77th would be 154
        ("a" * 152 + "€" + "a" * 10, None, [152, 11]),
        (CYR * 71, None, [67, 4]),
        (CYR * 135, None, [67, 67, 1]),
        (EMOJI * 36, None, [33, 3]),  # 33 x 2 = 66 units
        (CYR * 66 + EMOJI + CYR * 3, None, [66, 4]),
        ("a" * 71, UCS2, [67, 4]),  # forcing UCS-2 on GSM-7 text
        ("a" * 141, BINARY, [134, 7]),
        ("é" * 71, BINARY, [67, 4]),  # 2 UTF-8 bytes each
    ],
)
def test_split_part_lengths(text, encoding, expected_lengths):
    parts = split(text, encoding)
    assert [len(p) for p in parts] == expected_lengths
    assert "".join(parts) == text


def test_split_never_cuts_escape_pair_at_boundary():
    text = "a" * 152 + "€" + "b" * 20
    first, second = split(text)
    assert first == "a" * 152
    assert second == "€" + "b" * 20
    assert gsm7_septets(first) == 152


def test_split_never_cuts_surrogate_pair_at_boundary():
    text = CYR * 66 + EMOJI + "z" * 10
    first, second = split(text)
    assert first == CYR * 66
    assert second.startswith(EMOJI)
    for part in (first, second):
        part.encode("utf-16-le")  # no lone surrogate (would raise)


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1000,
        "€a" * 300,
        "x" * 152 + "€" * 200,
        "é{" * 333,
        CYR * 500,
        (EMOJI + CYR) * 100,
        EMOJI * 200,
        "Hello " + EMOJI + " [world] ça va? " * 20,
    ],
)
def test_split_parts_within_limit_and_rejoin(text):
    parts = split(text)
    result = analyse(text)
    single, multi = LIMITS[result.encoding]
    assert "".join(parts) == text
    assert len(parts) == result.segments
    limit = single if len(parts) == 1 else multi
    assert all(0 < _units(p, result.encoding) <= limit for p in parts)


def test_split_gsm7_rejects_non_gsm_text():
    with pytest.raises(ValueError, match="not GSM-7 encodable"):
        split("ça", GSM7)


def test_split_accepts_encoding_value_string():
    assert split("a" * 71, "ucs2") == ["a" * 67, "a" * 4]  # type: ignore[arg-type]


# --- property --------------------------------------------------------------------------

_alphabet = st.sampled_from(
    [c for c in GSM7_BASIC_TABLE if c != "\x1b"] + list(GSM7_EXTENSION_CHARS)
)
_texts = st.one_of(
    st.text(max_size=600),
    st.text(alphabet=_alphabet, max_size=600),
    st.text(alphabet=st.sampled_from(["a", "€", "{", "é"]), max_size=600),
    st.text(alphabet=st.sampled_from(["a", CYR, EMOJI]), max_size=300),
)


@given(_texts)
def test_property_split_rejoins_and_matches_segment_count(text):
    parts = split(text)
    result = analyse(text)
    assert "".join(parts) == text
    assert len(parts) == result.segments
    single, multi = LIMITS[result.encoding]
    limit = single if len(parts) == 1 else multi
    assert all(_units(p, result.encoding) <= limit for p in parts)
    assert sum(_units(p, result.encoding) for p in parts) == result.units
