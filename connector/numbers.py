"""The one canonical recipient: every phone number is parsed here once, with ``phonenumbers``.

``parse(text)`` turns a number as a producer wrote it into a ``PhoneNumber`` (E.164, region,
number type) or raises ``InvalidMessage`` saying why, with the library's own reason. What is
accepted: ``+``, the country code and the number, ASCII digits only, optionally formatted with
plain spaces, ``-``, ``.``, ``(`` ``)`` or ``/`` (removed). What is refused, never guessed at:
control and format characters (a trailing newline, a zero-width space, a direction mark), any
other whitespace (tab, no-break space), digits that only look like ASCII digits (fullwidth,
Arabic-Indic, ...), letters (``O`` for ``0``, vanity numbers), a number without ``+``.

Provider forms go both ways here too, so the opt-out table, routing, the records and every
provider see the same string for the same person: ``nanp10`` (Rev.io's ``ToNumber``/``TN``,
ThingSpace's MDN: the 10 national digits of a +1 number) and ``digits`` (the SMPP gateway's
``to``, Ogangi's numbers: E.164 without ``+``). ``from_provider(text, form)`` reads a number a
provider sent back (a STOP, an MO sender) into its canonical E.164, or None.

Validation levels (per route, ``routes.<name>.number_check``): ``possible`` (default) checks
what libphonenumber can check without its number-plan tables going stale: a known country code
and a possible length for it; ``valid`` adds libphonenumber's full number-plan check (the
number falls in an allocated range). ``possible`` is the default because the plan tables lag
real allocations (a new range is refused until the library is upgraded), and a refused number
cannot be retried; a route that pays per attempt or wants strictness sets ``valid``.

Cost of a new number (every recipient new: the library is most of a message's CPU): a number
written as ``+`` and ASCII digits skips ``clean``'s loop and most of ``phonenumbers.parse``
(``_fast_parse``: the steps parse takes for such a string, without those that leave it
unchanged: digit normalisation, possible-number extraction, extension and IDD stripping); its
region, type, validity and time zones share one region search (the library's ``number_type``,
``is_valid_number`` and ``time_zones_for_number`` each search again); the library keeps its
compiled patterns (``re_util.enable_pattern_cache``). These are the library's own steps in its
order, using a few of its private helpers: if those are missing (another version) the full
parse is used. ``tests/unit/test_numbers_fast_path.py`` compares every result with the library's
public functions over its example numbers of every region and type.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, ValidationResult, re_util

from connector.errors import InvalidMessage

try:    # the library's own parse steps, for the fast path (module docstring); absent: the full parse
    from phonenumbers.phonemetadata import PhoneMetadata
    from phonenumbers.phonenumberutil import (_MAX_LENGTH_FOR_NSN, _MIN_LENGTH_FOR_NSN, _extract_country_code,
                                              _maybe_strip_national_prefix_carrier_code, _number_type_helper,
                                              _set_italian_leading_zeros_for_phone_number, _test_number_length)
    from phonenumbers.re_util import re_compile
    FAST_PATH = True
except ImportError:  # pragma: no cover - another phonenumbers
    FAST_PATH = False
# Keep the metadata's compiled patterns (a bounded set): the type checks look up ~10 per number, and
# re.compile's own cache lookup was a tenth of a new number's cost (more once numbers of many
# regions push patterns out of re's 512-entry cache).
if hasattr(re_util, "enable_pattern_cache"):
    re_util.enable_pattern_cache()

LEVELS = ("possible", "valid")
DEFAULT_LEVEL = "possible"
FORMATTING = frozenset(" -.()/")
_ASCII_DIGITS = frozenset("0123456789")
_TYPE_NAMES = {v: k.lower().replace("_", "-") for k, v in vars(PhoneNumberType).items()
               if k.isupper() and isinstance(v, int)}
_FIELD = "recipient.phone"


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """A parsed number: ``e164`` is the canonical form every table, route and record uses."""

    e164: str
    region: str | None       # ISO 3166-1 alpha-2; None for non-geographic numbers (+800, +882, ...)

    @property
    def valid(self) -> bool:
        """libphonenumber's full number-plan check."""
        return _valid(self.e164)

    @property
    def number_type(self) -> str:
        """``mobile``, ``fixed-line``, ``fixed-line-or-mobile``, ``toll-free``, ... or ``unknown``."""
        return _type(self.e164)

    @property
    def country_region(self) -> str | None:
        """``region``, or for a number outside every allocated range (accepted by ``number_check =
        possible``, where libphonenumber names no region) the main region of its country calling
        code (+44 -> GB, +1 -> US); None for non-geographic numbers."""
        return self.region or _main_region(self.e164)

    @property
    def digits(self) -> str:
        """E.164 without ``+`` (the SMPP gateway's and Ogangi's form)."""
        return self.e164[1:]

    @property
    def is_nanp(self) -> bool:
        """A North American (+1, 10 national digits) number."""
        return self.e164.startswith("+1") and len(self.e164) == 12

    def nanp10(self, refusal: str = "this route takes North American (+1) numbers only") -> str:
        """The 10 national digits of a +1 number (Rev.io ``TN``, ThingSpace MDN); else
        InvalidMessage(``refusal``)."""
        if not self.is_nanp:
            raise InvalidMessage(refusal, field=_FIELD)
        return self.e164[2:]


def _describe(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')}"


def _plain_e164(text: str) -> bool:
    """``+`` then ASCII digits only: ``clean`` leaves it as it is."""
    return text[:1] == "+" and text.isascii() and text[1:].isdigit()


def clean(text: str) -> str:
    """``text`` without its formatting characters; InvalidMessage for anything not a digit,
    ``+`` or formatting (see the module docstring)."""
    if _plain_e164(text):
        return text
    kept: list[str] = []
    for ch in text:
        if ch in _ASCII_DIGITS:
            kept.append(ch)
        elif ch in FORMATTING:
            continue
        elif ch == "+":
            if kept:
                raise InvalidMessage("recipient.phone has a '+' that does not start the number", field=_FIELD)
            kept.append(ch)
        else:
            category = unicodedata.category(ch)
            if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
                what = "a control or invisible character"
            elif category.startswith("Z"):
                what = "whitespace other than a plain space"
            elif category == "Nd" or category.startswith("N"):
                what = "a digit that is not an ASCII digit 0-9"
            elif category.startswith("L"):
                what = "a letter (lookalike or vanity digits are not accepted)"
            else:
                what = "a character that is neither a digit nor phone formatting"
            raise InvalidMessage(f"recipient.phone contains {what} ({_describe(ch)})", field=_FIELD)
    return "".join(kept)


def parse(text: str) -> PhoneNumber:
    """The canonical number for ``text``, or InvalidMessage (reason invalid) with the reason."""
    if not isinstance(text, str):
        raise InvalidMessage("recipient.phone is not a string", field=_FIELD)
    return _parse_text(text)


@lru_cache(maxsize=65536)
def _parse_text(text: str) -> PhoneNumber:
    # Cached by the text as written: one message asks for its number several times (routing,
    # opt-outs, the provider's form, the result's region), and ``clean`` is a loop per character.
    # Refusals raise, so they are not cached.
    cleaned = clean(text)
    if not cleaned.startswith("+"):
        raise InvalidMessage("recipient.phone must be E.164: '+', the country code and the number "
                             "(e.g. +14155550100)", field=_FIELD)
    return _parse_clean(cleaned)


@lru_cache(maxsize=65536)
def _parse_clean(cleaned: str) -> PhoneNumber:
    # Cached: the library's parse is ~40 us, and a recipient's messages come in runs.
    try:
        number = _library_parse(cleaned)
    except NumberParseException as exc:
        raise InvalidMessage(f"recipient.phone is not a phone number: {_parse_reason(exc)} "
                             f"(libphonenumber: {exc._msg})", field=_FIELD) from None
    result = phonenumbers.is_possible_number_with_reason(number)
    if result != ValidationResult.IS_POSSIBLE:
        raise InvalidMessage(f"recipient.phone is not a possible number: {_possible_reason(result)} "
                             f"(libphonenumber)", field=_FIELD)
    region, known_type = _region_and_type(number)
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[e164] = (number, region, known_type, cleaned == e164)
    return PhoneNumber(e164=e164, region=region if region and region.isalpha() and region != "ZZ" else None)


def _library_parse(cleaned: str) -> phonenumbers.PhoneNumber:
    """``phonenumbers.parse(cleaned, None)``."""
    number = _fast_parse(cleaned)
    return number if number is not None else phonenumbers.parse(cleaned, None)


def _fast_parse(cleaned: str) -> phonenumbers.PhoneNumber | None:
    """``phonenumbers.parse(cleaned, None)`` for ``+`` and ASCII digits: the steps parse takes
    for such a string, without those that leave it unchanged; None for anything else, or where
    a step would refuse it (the full parse then raises its own error)."""
    if not (FAST_PATH and _plain_e164(cleaned)):
        return None
    digits = cleaned[1:]
    # parse refuses fewer than 3 digits after '+' (TOO_SHORT_AFTER_IDD); more than 20 cannot fit
    if not 2 < len(digits) <= 3 + _MAX_LENGTH_FOR_NSN:
        return None
    cc, national = _extract_country_code(digits)
    if not cc or len(national) < _MIN_LENGTH_FOR_NSN:
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(cc, phonenumbers.region_code_for_country_code(cc))
    if metadata is None:
        return None
    _, stripped, _ = _maybe_strip_national_prefix_carrier_code(national, metadata)
    if _test_number_length(stripped, metadata) not in _KEEP_PREFIX:
        national = stripped
    if not _MIN_LENGTH_FOR_NSN <= len(national) <= _MAX_LENGTH_FOR_NSN:
        return None
    number = phonenumbers.PhoneNumber(country_code=cc)
    _set_italian_leading_zeros_for_phone_number(national, number)
    number.national_number = int(national)
    return number


_KEEP_PREFIX = (ValidationResult.TOO_SHORT, ValidationResult.IS_POSSIBLE_LOCAL_ONLY, ValidationResult.INVALID_LENGTH)


def _region_and_type(number: phonenumbers.PhoneNumber) -> tuple[str | None, int | None]:
    """(``region_code_for_number(number)``, ``number_type(number)`` when the region search had
    to work it out, else None): the library's search, keeping what ``number_type`` would redo."""
    if not FAST_PATH:
        return phonenumbers.region_code_for_number(number), None
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code)
    if regions is None:
        return None, None
    if len(regions) == 1:
        return regions[0], None
    nsn = phonenumbers.national_significant_number(number)
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        if metadata.leading_digits is not None:
            if re_compile(metadata.leading_digits).match(nsn):
                return region, None
        elif (kind := _number_type_helper(nsn, metadata)) != PhoneNumberType.UNKNOWN:
            return region, kind
    return None, None


def _parse_reason(exc: NumberParseException) -> str:
    names = {v: k for k, v in vars(NumberParseException).items() if k.isupper() and isinstance(v, int)}
    return names.get(exc.error_type, str(exc.error_type))


def _possible_reason(result: int) -> str:
    names = {v: k for k, v in vars(ValidationResult).items() if k.isupper() and isinstance(v, int)}
    return names.get(result, str(result))


# The library's parse of recently parsed numbers, by E.164, with the region it found and the
# type if that search worked it out, for the checks below (type, validity, country, time zones):
# the destination rules ask every new number's type right after it is parsed, and parsing again
# would double their cost (~50 us). Bounded: cleared when full.
# The last field: the number was parsed from the E.164 itself (not from a text that only formats
# to it; parsing that E.164 can give another number, as in +243 00 1234567).
_PARSED: dict[str, tuple[phonenumbers.PhoneNumber, str | None, int | None, bool]] = {}
_PARSED_MAX = 4096


def _library_number(e164: str) -> phonenumbers.PhoneNumber:
    return _classified(e164)[0]


def _classified(e164: str) -> tuple[phonenumbers.PhoneNumber, str | None, int]:
    """The library's number, ``region_code_for_number`` and ``number_type`` of ``e164``."""
    entry = _PARSED.get(e164)
    if entry is None or not FAST_PATH:
        number = entry[0] if entry is not None else phonenumbers.parse(e164, None)
        return number, phonenumbers.region_code_for_number(number), phonenumbers.number_type(number)
    number, region, kind, own = entry
    if kind is None:    # number_type after its region search
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(number.country_code, region)
        kind = (PhoneNumberType.UNKNOWN if metadata is None else
                _number_type_helper(phonenumbers.national_significant_number(number), metadata))
        _PARSED[e164] = (number, region, kind, own)
    return number, region, kind


@lru_cache(maxsize=65536)
def _valid(e164: str) -> bool:
    # is_valid_number: is_valid_number_for_region(its region), i.e. a region whose country code is
    # the number's and a type other than unknown in that region's metadata (number_type's)
    number, region, kind = _classified(e164)
    return (region is not None and kind != PhoneNumberType.UNKNOWN and
            (region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY or
             number.country_code == phonenumbers.country_code_for_valid_region(region)))


@lru_cache(maxsize=65536)
def _main_region(e164: str) -> str | None:
    region = phonenumbers.region_code_for_country_code(_library_number(e164).country_code)
    return region if region.isalpha() and region != "ZZ" else None


@lru_cache(maxsize=65536)
def _type(e164: str) -> str:
    return _TYPE_NAMES.get(_classified(e164)[2], "unknown")


def time_zones(e164: str) -> tuple[str, ...]:
    """libphonenumber's time zones for a canonical number (``timezone.time_zones_for_number``,
    with the type its parse found), ``Etc/Unknown`` when it knows none."""
    from phonenumbers import timezone

    entry = _PARSED.get(e164)
    unknown = getattr(timezone, "_UNKNOWN_TIME_ZONE_LIST", None)
    country_level = getattr(timezone, "_country_level_time_zones_for_number", None)
    if (entry is not None and not entry[3]) or unknown is None or country_level is None:
        # the zones of the E.164 as parsed (here not the number it was written as), or another phonenumbers
        return tuple(timezone.time_zones_for_number(phonenumbers.parse(e164, None)))
    number, _, kind = _classified(e164)
    # time_zones_for_number's steps, with the type already known
    if kind == PhoneNumberType.UNKNOWN:
        return tuple(unknown)
    if not phonenumbers.is_number_type_geographical(kind, number.country_code):
        return tuple(country_level(number))
    return tuple(timezone.time_zones_for_geographical_number(number))


def clear_caches() -> None:
    """Forget every parsed number (benchmarks of new recipients, tests)."""
    for cached in (_parse_text, _parse_clean, _valid, _type, _main_region):
        cached.cache_clear()
    _PARSED.clear()


def check(number: PhoneNumber, level: str) -> PhoneNumber:
    """``number`` if it passes the route's validation level, else InvalidMessage."""
    if level == "valid" and not number.valid:
        raise InvalidMessage("recipient.phone is not a valid number: NOT_IN_NUMBER_PLAN (libphonenumber: "
                             "no allocated range of its country matches it)", field=_FIELD)
    return number


def regions_of_prefix(prefix: str) -> frozenset[str]:
    """The regions whose numbers can start with ``prefix`` (``+58``, ``+1415``, ``+4``: formatting
    ignored), from the country calling codes it can belong to; empty when it fits none."""
    digits = "".join(ch for ch in prefix if ch.isascii() and ch.isdigit())
    return frozenset(region for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
                     if digits and (str(cc).startswith(digits) or digits.startswith(str(cc)))
                     for region in regions if region.isalpha() and region != "ZZ")


def canonical(text: str) -> str | None:
    """The E.164 form of ``text`` (any accepted formatting), or None when it is not a number."""
    try:
        return parse(text).e164
    except InvalidMessage:
        return None


def from_provider(text: str | None, form: str) -> str | None:
    """The canonical E.164 of a number in a provider's ``form`` (``e164``, ``digits``:
    international digits with or without ``+``, ``nanp10``: 10 national digits of a +1
    number, or 11 with the leading 1), or None when it is not one. For numbers a provider
    sends back (MO senders, STOPs): surrounding whitespace is tolerated here, never inside."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if form == "nanp10":
        digits = text.removeprefix("+")
        if len(digits) == 10 and digits.isascii() and digits.isdigit():
            return canonical("+1" + digits)
        if len(digits) == 11 and digits.startswith("1"):
            return canonical("+" + digits)
        return None
    if form == "digits":
        return canonical(text if text.startswith("+") else "+" + text)
    if form == "e164":
        return canonical(text)
    raise ValueError(f"unknown number form {form!r}")
