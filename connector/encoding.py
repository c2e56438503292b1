"""SMS character-set detection, length accounting and segmentation.

This module owns the rules from 3GPP TS 23.038 (GSM 03.38) and TS 23.040 that
decide how an outbound message body is carried over SMS: whether it fits the
GSM 7-bit default alphabet (basic table plus the escape-prefixed extension
table, whose characters cost two septets) or must fall back to UCS-2, how many
units (septets, bytes or UTF-16 code units) it occupies, how many
concatenated segments that means (160/153 septets, 140/134 bytes, 70/67 UCS-2
units for a single/multi-part message) and where to cut it so that no part
exceeds its limit and no escape pair or surrogate pair is split across parts.
It is pure computation with no I/O; ``analyse`` runs per message on the
dispatch hot path, so the tables are precomputed at import and pure-ASCII text
takes a byte-translate fast path.

Smart encoding (``smart_encode``, per route ``smart_encoding``): ``LOOKALIKES`` maps characters
that force UCS-2 but have a GSM-7 look-alike (typographic quotes and primes, dashes and hyphens,
the ellipsis, Unicode spaces, invisible format characters, ...) to that look-alike. A text is
rewritten only when every character outside GSM-7 is in the table and the result costs no more
segments; one character without a look-alike (an emoji, Cyrillic, Chinese, ``á``) leaves the
whole text untouched, its curly quotes included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Encoding",
    "EncodedText",
    "analyse",
    "analyse_bytes",
    "detect",
    "gsm7_septets",
    "split",
    "LOOKALIKES",
    "SmartText",
    "smart_encode",
]


class Encoding(str, Enum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"
    BINARY = "8bit"


@dataclass(frozen=True, slots=True)
class EncodedText:
    encoding: Encoding
    units: int  # septets (GSM7), bytes (BINARY) or UTF-16 code units (UCS2)
    segments: int


# GSM 03.38 default alphabet, basic table, in code order (0x00..0x7F).
# 0x1B is ESC (the escape to the extension table), not a character users send.
GSM7_BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# Extension table characters (each sent as ESC + code, i.e. two septets).
GSM7_EXTENSION_CHARS = "\f^{}\\[~]|€"

# (single-message limit, per-part limit of a concatenated message)
LIMITS: dict[Encoding, tuple[int, int]] = {
    Encoding.GSM7: (160, 153),
    Encoding.UCS2: (70, 67),
    Encoding.BINARY: (140, 134),
}

_BASIC: frozenset[str] = frozenset(GSM7_BASIC_TABLE) - {"\x1b"}
_EXT: frozenset[str] = frozenset(GSM7_EXTENSION_CHARS)
_GSM7: frozenset[str] = _BASIC | _EXT
# Byte tables for the pure-ASCII fast path (bytes.translate deletes in C).
_ASCII_GSM7_BYTES = bytes(sorted(ord(c) for c in _GSM7 if c.isascii()))
_ASCII_NON_EXT_BYTES = bytes(b for b in range(256) if chr(b) not in _EXT)
# Module-level aliases: attribute access on an Enum class is comparatively slow.
_GSM7_ENC, _UCS2_ENC, _BINARY_ENC = Encoding.GSM7, Encoding.UCS2, Encoding.BINARY
_GSM7_SINGLE, _GSM7_MULTI = LIMITS[_GSM7_ENC]
_UCS2_SINGLE, _UCS2_MULTI = LIMITS[_UCS2_ENC]
_BINARY_SINGLE, _BINARY_MULTI = LIMITS[_BINARY_ENC]


def _measure(text: str) -> tuple[Encoding, int, int]:
    """Return (encoding, units, number of characters costing more than one unit)."""
    if text.isascii():
        data = text.encode("ascii")
        if not data.translate(None, _ASCII_GSM7_BYTES):
            n_ext = len(data.translate(None, _ASCII_NON_EXT_BYTES))
            return _GSM7_ENC, len(data) + n_ext, n_ext
        return _UCS2_ENC, len(data), 0  # e.g. '`' or a control character
    chars = set(text)
    if chars <= _GSM7:
        n_ext = sum(map(text.count, chars & _EXT))
        return _GSM7_ENC, len(text) + n_ext, n_ext
    units = len(text.encode("utf-16-le", "surrogatepass")) >> 1
    return _UCS2_ENC, units, units - len(text)


def _gsm7_units(text: str) -> int:
    return len(text) + sum(map(text.count, GSM7_EXTENSION_CHARS))


def _ucs2_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) >> 1


def _utf8_units(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# encoding -> (units of a string, the most units one character can cost)
_UNITS: dict[Encoding, tuple[Callable[[str], int], int]] = {
    _GSM7_ENC: (_gsm7_units, 2),  # extension character = ESC + code
    _UCS2_ENC: (_ucs2_units, 2),  # non-BMP character = surrogate pair
    _BINARY_ENC: (_utf8_units, 4),  # text sent as 8-bit data is UTF-8
}


def _cuts(text: str, encoding: Encoding, limit: int) -> list[int]:
    """End offsets of greedy parts of at most ``limit`` units each.

    Cuts fall only between code points, so an escape pair (one extension
    character) or a surrogate pair (one non-BMP character) is never split.
    """
    units, max_cost = _UNITS[encoding]
    n = len(text)
    ends: list[int] = []
    start = 0
    while start < n:
        end = min(n, start + limit)
        # Shrink by the fewest characters that could remove the overflow;
        # this never passes the largest fitting end, and takes few steps.
        while (over := units(text[start:end]) - limit) > 0:
            end -= -(-over // max_cost)
        ends.append(end)
        start = end
    return ends


def detect(text: str) -> Encoding:
    """GSM7 if every character is in the basic or extension table, else UCS2."""
    if text.isascii():
        if text.encode("ascii").translate(None, _ASCII_GSM7_BYTES):
            return _UCS2_ENC
        return _GSM7_ENC
    return _GSM7_ENC if _GSM7.issuperset(text) else _UCS2_ENC


def analyse(text: str) -> EncodedText:
    """Detect the encoding and count units and segments (empty text: 1 segment)."""
    encoding, units, n_double = _measure(text)
    if encoding is _GSM7_ENC:
        single, multi = _GSM7_SINGLE, _GSM7_MULTI
    else:
        single, multi = _UCS2_SINGLE, _UCS2_MULTI
    if units <= single:
        segments = 1
    elif not n_double:
        segments = -(-units // multi)
    else:  # two-unit characters may leave a part one unit short
        segments = len(_cuts(text, encoding, multi))
    return EncodedText(encoding, units, segments)


def analyse_bytes(data: bytes) -> EncodedText:
    """Account for an 8-bit (binary) payload: 140 bytes single, 134 per part."""
    n = len(data)
    segments = 1 if n <= _BINARY_SINGLE else -(-n // _BINARY_MULTI)
    return EncodedText(_BINARY_ENC, n, segments)


def gsm7_septets(text: str) -> int:
    """Septet count of ``text``; raises ValueError if it is not GSM-7 encodable."""
    encoding, units, _ = _measure(text)
    if encoding is not _GSM7_ENC:
        i, ch = next((i, ch) for i, ch in enumerate(text) if ch not in _GSM7)
        raise ValueError(f"not GSM-7 encodable: {ch!r} (U+{ord(ch):04X}) at index {i}")
    return units


def split(text: str, encoding: Encoding | None = None) -> list[str]:
    """Split ``text`` into SMS parts within the per-part limit of ``encoding``.

    ``encoding`` defaults to ``detect(text)``. Text that fits one segment is
    returned as ``[text]``. Extension characters (escape pairs) and characters
    outside the BMP (surrogate pairs) are never cut. ``Encoding.BINARY``
    counts the UTF-8 bytes of each character and never cuts inside one.
    Raises ValueError if ``encoding`` is GSM7 and the text is not encodable.
    """
    if encoding is None:
        encoding, units, n_double = _measure(text)
    else:
        encoding = Encoding(encoding)
        units = gsm7_septets(text) if encoding is _GSM7_ENC else _UNITS[encoding][0](text)
        n_double = units - len(text)
    single, multi = LIMITS[encoding]
    if units <= single:
        return [text]
    if not n_double:  # one unit per character
        return [text[i : i + multi] for i in range(0, len(text), multi)]
    ends = _cuts(text, encoding, multi)
    return [text[a:b] for a, b in zip([0, *ends], ends)]


# --- smart encoding ---------------------------------------------------------------------------

# Character -> its GSM-7 look-alike (what is sent instead; "" drops an invisible character).
# Only punctuation, spaces, invisible characters and the modifier letters drawn as punctuation
# (U+02BC apostrophe, U+02B9 prime, U+02C6 circumflex, U+02DC tilde): never a letter of a word
# or a digit. Guillemets, fullwidth forms and symbols without a faithful look-alike are left out.
LOOKALIKES: dict[str, str] = {
    # single quotes, apostrophes and primes -> '
    "\u2018": "'",   # LEFT SINGLE QUOTATION MARK
    "\u2019": "'",   # RIGHT SINGLE QUOTATION MARK (the typographic apostrophe)
    "\u201a": "'",   # SINGLE LOW-9 QUOTATION MARK
    "\u201b": "'",   # SINGLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2032": "'",   # PRIME
    "\u2035": "'",   # REVERSED PRIME
    "\u02bc": "'",   # MODIFIER LETTER APOSTROPHE
    "\u02b9": "'",   # MODIFIER LETTER PRIME
    "\u00b4": "'",   # ACUTE ACCENT (typed as an apostrophe)
    "`": "'",         # GRAVE ACCENT (ASCII, but not in GSM-7)
    # double quotes and primes -> "
    "\u201c": '"',   # LEFT DOUBLE QUOTATION MARK
    "\u201d": '"',   # RIGHT DOUBLE QUOTATION MARK
    "\u201e": '"',   # DOUBLE LOW-9 QUOTATION MARK
    "\u201f": '"',   # DOUBLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2033": '"',   # DOUBLE PRIME
    "\u2036": '"',   # REVERSED DOUBLE PRIME
    # hyphens, dashes and the minus sign -> -
    "\u2010": "-",   # HYPHEN
    "\u2011": "-",   # NON-BREAKING HYPHEN
    "\u2012": "-",   # FIGURE DASH
    "\u2013": "-",   # EN DASH
    "\u2014": "-",   # EM DASH
    "\u2015": "-",   # HORIZONTAL BAR
    "\u2212": "-",   # MINUS SIGN
    "\u2043": "-",   # HYPHEN BULLET
    # bullets -> -
    "\u2022": "-",   # BULLET
    "\u2023": "-",   # TRIANGULAR BULLET
    "\u2219": "-",   # BULLET OPERATOR
    # dots and slashes
    "\u2026": "...",  # HORIZONTAL ELLIPSIS (3 septets: kept only if no segment is added)
    "\u2024": ".",   # ONE DOT LEADER
    "\u2044": "/",   # FRACTION SLASH
    "\u2215": "/",   # DIVISION SLASH
    # spacing modifiers -> the extension table (2 septets each)
    "\u02c6": "^",   # MODIFIER LETTER CIRCUMFLEX ACCENT
    "\u02dc": "~",   # SMALL TILDE
    # spaces -> a plain space; line and paragraph separators -> a line feed
    "\t": " ",       # CHARACTER TABULATION
    "\u00a0": " ",   # NO-BREAK SPACE
    "\u2000": " ",   # EN QUAD
    "\u2001": " ",   # EM QUAD
    "\u2002": " ",   # EN SPACE
    "\u2003": " ",   # EM SPACE
    "\u2004": " ",   # THREE-PER-EM SPACE
    "\u2005": " ",   # FOUR-PER-EM SPACE
    "\u2006": " ",   # SIX-PER-EM SPACE
    "\u2007": " ",   # FIGURE SPACE
    "\u2008": " ",   # PUNCTUATION SPACE
    "\u2009": " ",   # THIN SPACE
    "\u200a": " ",   # HAIR SPACE
    "\u202f": " ",   # NARROW NO-BREAK SPACE
    "\u205f": " ",   # MEDIUM MATHEMATICAL SPACE
    "\u3000": " ",   # IDEOGRAPHIC SPACE
    "\u2028": "\n",  # LINE SEPARATOR
    "\u2029": "\n",  # PARAGRAPH SEPARATOR
    # invisible format characters -> nothing
    "\u00ad": "",    # SOFT HYPHEN
    "\u200b": "",    # ZERO WIDTH SPACE
    "\u200c": "",    # ZERO WIDTH NON-JOINER
    "\u200d": "",    # ZERO WIDTH JOINER
    "\u2060": "",    # WORD JOINER
    "\ufeff": "",    # ZERO WIDTH NO-BREAK SPACE (BOM)
}
_LOOKALIKE_TABLE = str.maketrans(LOOKALIKES)


@dataclass(frozen=True, slots=True)
class SmartText:
    """A text rewritten to GSM-7 by ``smart_encode``: ``text`` is what is sent."""

    text: str
    encoded: EncodedText        # of ``text``: always GSM-7
    original: EncodedText       # of the text as written: UCS-2
    replaced: int               # characters replaced (or dropped)

    @property
    def segments_saved(self) -> int:
        return self.original.segments - self.encoded.segments


def smart_encode(text: str) -> SmartText | None:
    """The GSM-7 form of ``text`` when the only characters keeping it out of GSM-7 have a
    look-alike (``LOOKALIKES``) and the result costs no more segments; else None (send ``text``
    as is: it is GSM-7 already, or it needs UCS-2 for a character without a look-alike)."""
    if detect(text) is _GSM7_ENC:
        return None
    converted = text.translate(_LOOKALIKE_TABLE)
    if not converted or detect(converted) is not _GSM7_ENC:
        return None
    original, encoded = analyse(text), analyse(converted)
    if encoded.segments > original.segments:
        return None
    replaced = sum(1 for ch in text if ch in LOOKALIKES)
    return SmartText(converted, encoded, original, replaced)
