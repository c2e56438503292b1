"""Scheduled sends and quiet hours: the arithmetic of connector.schedule (no clock, no Kafka)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import orjson
import pytest

from connector import schedule
from connector.errors import InvalidRecord
from connector.records import decode_outbound, encode_outbound
from connector.schedule import QUIET_HOURS, SCHEDULED, SchedulePolicy, parse_quiet_hours, quiet_until

NIGHT = parse_quiet_hours("21:00-08:00")
NY, LA, CHI = "America/New_York", "America/Los_Angeles", "America/Chicago"


def at(text: str, zone: str = "UTC") -> float:
    """Epoch of a local wall time in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def local(epoch: float, zone: str) -> str:
    return datetime.fromtimestamp(epoch, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


@pytest.mark.parametrize("text, start, end", [
    ("21:00-08:00", "21:00", "08:00"), (" 01:30 - 05:00 ", "01:30", "05:00"), ("00:00-23:59", "00:00", "23:59"),
])
def test_quiet_hours_parse(text: str, start: str, end: str) -> None:
    q = parse_quiet_hours(text)
    assert q is not None and f"{q.start:%H:%M}" == start and f"{q.end:%H:%M}" == end


@pytest.mark.parametrize("text, start, end, length_s", [
    ("21:00-08:00:30", "21:00:00", "08:00:30", 11 * 3600 + 30),
    ("21:00:15-08:00", "21:00:15", "08:00:00", 11 * 3600 - 15),
    (" 12:00:05 - 12:00:59 ", "12:00:05", "12:00:59", 54),
    ("12:00:00-12:00", "12:00:00", "12:00:00", 0),
])
def test_quiet_hours_parse_seconds(text: str, start: str, end: str, length_s: int) -> None:
    q = parse_quiet_hours(text)
    assert q is not None and f"{q.start:%H:%M:%S}" == start and f"{q.end:%H:%M:%S}" == end
    assert q.length_s == length_s and q.empty == (length_s == 0)


def test_quiet_hours_print_seconds_only_when_they_have_some() -> None:
    assert str(parse_quiet_hours("21:00-08:00")) == "21:00-08:00"
    assert str(parse_quiet_hours("21:00:00-08:00:30")) == "21:00-08:00:30"


@pytest.mark.parametrize("text", ["21-08", "24:00-08:00", "9:00-10:00", "21:00", "21:00-08:00-09:00", "night",
                                  "21:00-08:00:60", "21:00-08:00:5", "21:00:-08:00", "21:00-08:00.5",
                                  "21:00-08:00:30:00", "21:00-8:00:30"])
def test_quiet_hours_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not HH:MM-HH:MM .*HH:MM:SS.*e\.g\. 21:00-08:00"):
        parse_quiet_hours(text)


def test_empty_quiet_hours_are_none() -> None:
    assert parse_quiet_hours("") is None
    q = parse_quiet_hours("08:00-08:00")
    assert q is not None and q.empty and q.length_s == 0
    assert quiet_until(at("2026-03-02 23:00", NY), q, (NY,)) is None


@pytest.mark.parametrize("when, until", [
    ("2026-03-02 20:59", None),                      # just before
    ("2026-03-02 21:00", "2026-03-03 08:00"),        # start inclusive
    ("2026-03-02 23:30", "2026-03-03 08:00"),        # before midnight: ends the next morning
    ("2026-03-03 00:10", "2026-03-03 08:00"),        # after midnight: ends the same morning
    ("2026-03-03 07:59", "2026-03-03 08:00"),
    ("2026-03-03 08:00", None),                      # end exclusive
    ("2026-03-03 12:00", None),
])
def test_window_crossing_midnight(when: str, until: str | None) -> None:
    end = quiet_until(at(when, NY), NIGHT, (NY,))
    assert (local(end, NY) if end is not None else None) == (until.replace("T", " ") if until else None)


def test_quiet_hours_with_seconds_end_on_their_second() -> None:
    q = parse_quiet_hours("12:00-14:00:30")
    end = quiet_until(at("2026-03-02 14:00:29.5", NY), q, (NY,))
    assert end == at("2026-03-02 14:00:30", NY)          # not the minute before, not the one after
    assert quiet_until(at("2026-03-02 14:00:30", NY), q, (NY,)) is None      # end exclusive
    assert quiet_until(at("2026-03-02 11:59:59", NY), parse_quiet_hours("12:00:00-12:00:15"), (NY,)) is None
    assert quiet_until(at("2026-03-02 12:00:00", NY), parse_quiet_hours("12:00:00-12:00:15"), (NY,)) \
        == at("2026-03-02 12:00:15", NY)
    # crossing midnight with seconds: ends the next morning, on its second
    night = parse_quiet_hours("23:59:50-00:00:10")
    assert quiet_until(at("2026-03-02 23:59:55", NY), night, (NY,)) == at("2026-03-03 00:00:10", NY)
    assert quiet_until(at("2026-03-03 00:00:05", NY), night, (NY,)) == at("2026-03-03 00:00:10", NY)


def test_window_within_one_day() -> None:
    q = parse_quiet_hours("12:00-14:00")
    assert local(quiet_until(at("2026-03-02 13:00", NY), q, (NY,)), NY) == "2026-03-02 14:00"
    assert quiet_until(at("2026-03-02 11:59", NY), q, (NY,)) is None
    assert quiet_until(at("2026-03-02 22:00", NY), q, (NY,)) is None


def test_several_zones_wait_until_quiet_hours_end_in_all() -> None:
    # 07:30 in New York is 04:30 in Los Angeles: quiet until 08:00 Pacific = 11:00 Eastern
    end = quiet_until(at("2026-03-03 07:30", NY), NIGHT, (NY, CHI, LA))
    assert local(end, LA) == "2026-03-03 08:00" and local(end, NY) == "2026-03-03 11:00"
    # 20:30 in Los Angeles is 23:30 in New York: quiet there already, so wait for New York's
    # morning, by which time Los Angeles (05:00) is quiet too: 08:00 Pacific
    end = quiet_until(at("2026-03-02 20:30", LA), NIGHT, (NY, LA))
    assert local(end, LA) == "2026-03-03 08:00"
    # 14:00 Eastern is 11:00 Pacific: free in both
    assert quiet_until(at("2026-03-03 14:00", NY), NIGHT, (NY, LA)) is None


def test_zones_with_no_common_free_hour_use_the_latest_single_zone_end() -> None:
    # Guam is 15 hours ahead of New York: 13 free hours a day each, none in common at 21:00-08:00
    zones = (NY, "Pacific/Guam")
    start = at("2026-03-03 07:00", NY)     # quiet in New York (until 08:00) and in Guam (22:00, until 08:00)
    end = quiet_until(start, NIGHT, zones)
    assert local(end, "Pacific/Guam") == "2026-03-04 08:00"
    assert end > start


def test_us_numbers_use_their_own_zone_or_every_zone_of_the_range() -> None:
    assert schedule.zones_for_number("+12125550100") == (NY,)
    assert schedule.zones_for_number("+18085550100") == ("Pacific/Honolulu",)
    toll_free = schedule.zones_for_number("+18005550100")
    assert NY in toll_free and LA in toll_free and len(toll_free) > 10
    assert schedule.zones_for_number("+15555550100") == ()      # unknown: not held


def test_dst_spring_forward_night() -> None:
    # New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT. Quiet until 02:30, a wall time that
    # does not exist that night: the end is the later reading (02:30 EST = 03:30 EDT), never earlier.
    q = parse_quiet_hours("22:00-02:30")
    end = quiet_until(at("2026-03-07 23:00", NY), q, (NY,))
    assert datetime.fromtimestamp(end, timezone.utc) == datetime(2026, 3, 8, 7, 30, tzinfo=timezone.utc)
    # the ordinary 21:00-08:00 window that night is one hour shorter in real time
    start = at("2026-03-07 21:00", NY)
    end = quiet_until(start, NIGHT, (NY,))
    assert local(end, NY) == "2026-03-08 08:00" and end - start == 10 * 3600


def test_dst_fall_back_night() -> None:
    # New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    q = parse_quiet_hours("22:00-01:30")
    end = quiet_until(at("2026-10-31 23:00", NY), q, (NY,))
    assert datetime.fromtimestamp(end, timezone.utc) == datetime(2026, 11, 1, 6, 30, tzinfo=timezone.utc)  # 01:30 EST
    start = at("2026-10-31 21:00", NY)
    assert quiet_until(start, NIGHT, (NY,)) - start == 12 * 3600


def test_due_send_at_then_quiet_hours() -> None:
    now = at("2026-03-02 12:00", NY)
    assert schedule.due(None, now, NIGHT, (NY,)) is None
    assert schedule.due(now - 60, now, NIGHT, (NY,)) is None                # in the past: now
    assert schedule.due(now + 60, now, NIGHT, (NY,)) == (now + 60, SCHEDULED)
    late = at("2026-03-02 22:00", NY)                                       # scheduled into quiet hours
    assert schedule.due(late, now, NIGHT, (NY,)) == (at("2026-03-03 08:00", NY), QUIET_HOURS)
    assert schedule.due(late, now, None, (NY,)) == (late, SCHEDULED)


def _record(**extra: object) -> bytes:
    return orjson.dumps({"client_message_id": "c1", "recipient": {"phone": "+12125550100"}, "text": "hi", **extra})


def test_policy_per_route_bypass_and_named_zone() -> None:
    policy = SchedulePolicy({"marketing": NIGHT})
    now = at("2026-03-02 23:00", NY)
    msg = decode_outbound(_record())
    assert policy.wait(msg, "marketing", now) == (at("2026-03-03 08:00", NY), QUIET_HOURS)
    assert policy.wait(msg, "otp", now) is None                                    # no quiet hours on that route
    assert policy.wait(decode_outbound(_record(bypass_quiet_hours=True)), "marketing", now) is None
    # named zone wins over the number's: 23:00 New York is 20:00 Los Angeles, not quiet yet
    assert policy.wait(decode_outbound(_record(recipient_time_zone=LA)), "marketing", now) is None


@pytest.mark.parametrize("text, epoch", [
    ("2026-03-02T10:00:00Z", 1772445600.0), ("2026-03-02t10:00:00z", 1772445600.0),
    ("2026-03-02T11:00:00.500+01:00", 1772445600.5),
])
def test_send_at_rfc3339(text: str, epoch: float) -> None:
    msg = decode_outbound(_record(send_at=text))
    assert msg.send_at == epoch
    assert decode_outbound(encode_outbound(msg)).send_at == epoch


@pytest.mark.parametrize("record, field", [
    ({"send_at": "2026-03-02T10:00:00"}, "send_at"),          # no offset
    ({"send_at": "2026-03-02 10:00:00Z"}, "send_at"),         # not RFC 3339
    ({"send_at": "2026-03-02"}, "send_at"),
    ({"send_at": "2026-02-30T10:00:00Z"}, "send_at"),         # no such day
    ({"recipient_time_zone": "Mars/Olympus"}, "recipient_time_zone"),
    ({"bypass_quiet_hours": "yes"}, "bypass_quiet_hours"),
])
def test_bad_schedule_fields_are_invalid_records(record: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRecord) as err:
        decode_outbound(_record(**record))
    assert err.value.field == field
