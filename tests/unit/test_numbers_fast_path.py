"""The fast path of connector.numbers gives what the library's public functions give.

For ``+`` and ASCII digits, ``numbers`` runs the library's own parse steps without those that
leave such a string unchanged, and finds region, type, validity and time zones with one region
search instead of one per question (see its module docstring). Here every answer is compared with
the library's public functions (``parse``, ``is_possible_number_with_reason``,
``region_code_for_number``, ``format_number``, ``number_type``, ``is_valid_number``,
``timezone.time_zones_for_number``: what numbers.py called before): exhaustively over
libphonenumber's example numbers of every region and number type (and its invalid examples),
then with hypothesis over those numbers cut short, lengthened, altered, given a national prefix,
and over arbitrary digit strings."""

from __future__ import annotations

from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType, ValidationResult
from phonenumbers import timezone as phone_zones

from connector import numbers, schedule
from connector.errors import InvalidMessage


def _e164(n: phonenumbers.PhoneNumber | None) -> str | None:
    return None if n is None else phonenumbers.format_number(n, PhoneNumberFormat.E164)


def _examples() -> list[str]:
    found: set[str | None] = set()
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in vars(PhoneNumberType).values():
            if isinstance(kind, int):
                found.add(_e164(phonenumbers.example_number_for_type(region, kind)))
        found.add(_e164(phonenumbers.invalid_example_number(region)))
    for cc in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        found.add(_e164(phonenumbers.example_number_for_non_geo_entity(cc)))
    return sorted(e for e in found if e is not None)


EXAMPLES = _examples()
TYPE_NAMES = {v: k.lower().replace("_", "-") for k, v in vars(PhoneNumberType).items() if k.isupper()}


def reference(text: str) -> dict[str, Any] | None:
    """What numbers.parse and the properties gave before the fast path: the library's public
    functions, one after another; None where the number is refused."""
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != ValidationResult.IS_POSSIBLE:
        return None
    region = phonenumbers.region_code_for_number(number)
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    again = phonenumbers.parse(e164, None)
    return {"e164": e164, "region": region if region and region.isalpha() and region != "ZZ" else None,
            "number_type": TYPE_NAMES.get(phonenumbers.number_type(number), "unknown"),
            "valid": phonenumbers.is_valid_number(number),
            "zones": tuple(phone_zones.time_zones_for_number(again))}


def connector_view(text: str) -> dict[str, Any] | None:
    try:
        n = numbers.parse(text)
    except InvalidMessage:
        return None
    return {"e164": n.e164, "region": n.region, "number_type": n.number_type, "valid": n.valid,
            "zones": numbers.time_zones(n.e164)}


def same_as_the_library(text: str) -> None:
    try:
        expected_number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        expected_number = None
    fast = numbers._fast_parse(text)
    assert fast is None or fast == expected_number, text
    if fast is not None:
        assert numbers._region_and_type(fast)[0] == phonenumbers.region_code_for_number(fast)
        kind = numbers._region_and_type(fast)[1]
        assert kind is None or kind == phonenumbers.number_type(fast)
    assert connector_view(text) == reference(text), text


def test_the_fast_path_is_on_with_this_phonenumbers() -> None:
    assert numbers.FAST_PATH, "phonenumbers' private parse steps moved: the fast path is off (module docstring)"


def test_every_example_number_of_every_region_and_type_takes_the_fast_path_and_agrees() -> None:
    assert len(EXAMPLES) > 1000
    numbers.clear_caches()
    for e164 in EXAMPLES:
        assert numbers._fast_parse(e164) is not None, e164       # taken, not a fallback
        same_as_the_library(e164)


def test_answers_do_not_depend_on_what_is_cached() -> None:
    # the type / validity / zones asked after the parsed numbers were forgotten (full library path)
    sample = EXAMPLES[::7]
    first = [connector_view(e) for e in sample]
    numbers._PARSED.clear()
    numbers._type.cache_clear()
    numbers._valid.cache_clear()
    assert [connector_view(e) for e in sample] == first
    numbers.clear_caches()
    assert [connector_view(e) for e in sample] == first


@st.composite
def altered_examples(draw: st.DrawFn) -> str:
    e164 = draw(st.sampled_from(EXAMPLES))
    digits = e164[1:]
    how = draw(st.sampled_from(["cut", "extend", "change", "national-prefix", "as-is"]))
    if how == "cut":
        digits = digits[:draw(st.integers(0, len(digits)))]
    elif how == "extend":
        digits += draw(st.text("0123456789", min_size=1, max_size=6))
    elif how == "change":
        i = draw(st.integers(0, len(digits) - 1))
        digits = digits[:i] + draw(st.sampled_from("0123456789")) + digits[i + 1:]
    elif how == "national-prefix":    # a trunk prefix after the country code, as people write it
        cc = str(phonenumbers.parse(e164, None).country_code)
        digits = cc + draw(st.sampled_from(["0", "1", "8", "00", "9", "15"])) + digits[len(cc):]
    return "+" + digits


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(altered_examples())
def test_altered_example_numbers_agree_with_the_library(text: str) -> None:
    same_as_the_library(text)


@settings(max_examples=2000, deadline=None)
@given(st.text("0123456789", min_size=0, max_size=24).map(lambda d: "+" + d))
def test_arbitrary_digit_strings_agree_with_the_library(text: str) -> None:
    same_as_the_library(text)


@pytest.mark.parametrize("e164", ["+14155550123", "+442071838750", "+61491570156", "+80012345678", "+15551234567"])
def test_quiet_hours_zones_are_the_librarys(e164: str) -> None:
    expected = tuple(z for z in phone_zones.time_zones_for_number(phonenumbers.parse(e164, None))
                     if schedule._zone(z) is not None)
    assert schedule.zones_for_number(e164) == expected
