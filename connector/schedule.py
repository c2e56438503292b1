"""When a message may be sent: its ``send_at`` and its route's quiet hours in the recipient's time.

Pure arithmetic, no Kafka, no clock except through arguments. ``due(msg, quiet, now)`` says
whether a message must wait and until when: the later of its ``send_at`` and, when that instant
falls inside the route's ``quiet_hours`` in the recipient's local time, the end of those quiet
hours. ``streams.scheduled`` and the retry topic make the wait durable; the pipeline asks again
when the message comes back, so a message is never sent earlier than this module allows even
if its clock moved or the configuration changed meanwhile.

Local time: the record's ``recipient_time_zone`` when it names one (IANA, checked when the
record is decoded), else the zones ``phonenumbers`` gives for the number (one for most numbers;
several for a region or a non-geographic range, e.g. +1 800 numbers span Guam to Newfoundland).
With several zones an instant is quiet when it is quiet in any of them: the wait ends when it is
over in all of them. When the zones are so far apart that no hour is free in all (quiet hours
longer than the day minus the zones' spread), the wait ends at the latest end of the quiet
hours in any one zone. A number whose zone is unknown, a device id or a device selection with
no named zone is not held by quiet hours. Wall-clock times come from ``zoneinfo`` (the tz
database), so daylight-saving nights are exact: an end time that does not exist that night
(skipped by a spring-forward) ends at the same wall time of the earlier offset (later in UTC,
never earlier); one that happens twice (fall-back) ends at its second occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time as wall_time, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_zones

from connector import numbers
from connector.config.loading import parse_quiet_hours as config_quiet_hours

SCHEDULED, QUIET_HOURS = "scheduled", "quiet-hours"   # the deferral reasons (metrics, headers)


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window of local wall-clock time, ``start`` inclusive, ``end`` exclusive; it crosses
    midnight when ``end`` <= ``start`` (21:00-08:00)."""

    start: wall_time
    end: wall_time

    def __str__(self) -> str:
        return f"{_wall(self.start)}-{_wall(self.end)}"

    @property
    def empty(self) -> bool:
        return self.start == self.end

    @property
    def length_s(self) -> float:
        return float((_seconds(self.end) - _seconds(self.start)) % 86400)

    def end_after(self, instant: datetime) -> datetime | None:
        """If local ``instant`` (aware, in its zone) is inside the window, the (aware) end of this
        occurrence of the window; else None."""
        if self.empty:
            return None
        t, day = instant.timetz().replace(tzinfo=None), instant.date()
        if self.start < self.end:
            if not self.start <= t < self.end:
                return None
        elif t >= self.start:
            day += timedelta(days=1)          # crossing midnight: ends tomorrow morning
        elif not t < self.end:
            return None
        zone = instant.tzinfo
        # a wall time skipped (spring-forward) or repeated (fall-back) that night: the later instant
        return max(datetime.combine(day, self.end, zone).replace(fold=f).astimezone(timezone.utc) for f in (0, 1))


def _wall(t: wall_time) -> str:
    """``HH:MM``, or ``HH:MM:SS`` when the seconds are not zero (the forms quiet_hours are written in)."""
    return f"{t:%H:%M:%S}" if t.second else f"{t:%H:%M}"


def _seconds(t: wall_time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def parse_quiet_hours(text: str) -> QuietHours | None:
    """``"21:00-08:00"`` (either end may be ``HH:MM:SS``) -> QuietHours; ``""`` -> None; ValueError for anything else."""
    span = config_quiet_hours(text)
    return QuietHours(*span) if span is not None else None


def known_zone(name: str) -> bool:
    """An IANA time zone name the tz database knows."""
    return _zone(name) is not None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=65536)
def zones_for_number(e164: str) -> tuple[str, ...]:
    """The IANA zones libphonenumber gives for a number (empty when unknown)."""
    canonical = numbers.canonical(e164)
    if canonical is not None:       # the type its parse found: no second parse and region search
        found = numbers.time_zones(canonical)
    else:
        try:
            found = tuple(phone_zones.time_zones_for_number(phonenumbers.parse(e164)))
        except phonenumbers.NumberParseException:
            return ()
    return tuple(z for z in found if _zone(z) is not None)


def quiet_until(at: float, quiet: QuietHours, zones: tuple[str, ...]) -> float | None:
    """If epoch ``at`` falls inside ``quiet`` in any of ``zones``: the epoch at which it is over in
    all of them (see the module docstring for zones with no common free hour); else None."""
    infos = [z for z in (_zone(n) for n in zones) if z is not None]
    if not infos or quiet.empty:
        return None
    t = datetime.fromtimestamp(at, timezone.utc)
    start = t
    for _ in range(2 * len(infos) + 2):
        ends = [e for e in (quiet.end_after(t.astimezone(z)) for z in infos) if e is not None]
        if not ends:
            return None if t == start else t.timestamp()
        t = max(ends)
    # no instant free in every zone: the latest end in any single zone
    ends = [e for e in (quiet.end_after(start.astimezone(z)) for z in infos) if e is not None]
    return max(ends).timestamp()


def due(send_at: float | None, now: float, quiet: QuietHours | None, zones: tuple[str, ...]) -> tuple[float, str] | None:
    """When a message may be sent and why it waits (``SCHEDULED`` / ``QUIET_HOURS``), or None to
    send it now. ``zones``: the recipient's (``recipient_zones``); quiet hours apply from the
    later of now and ``send_at``."""
    at, reason = now, None
    if send_at is not None and send_at > now:
        at, reason = send_at, SCHEDULED
    if quiet is not None:
        end = quiet_until(at, quiet, zones)
        if end is not None:
            at, reason = end, QUIET_HOURS
    return (at, reason) if reason is not None else None


def recipient_zones(named: str | None, e164: str | None) -> tuple[str, ...]:
    """The zones whose local time counts for a recipient: the record's named zone, else the
    number's zones, else none."""
    if named:
        return (named,)
    if e164:
        return zones_for_number(e164)
    return ()


@dataclass(frozen=True)
class SchedulePolicy:
    """The deployment's deferral rules: each route's quiet hours and how far ahead a message may
    be scheduled. ``wait`` is what the pipeline asks of every message."""

    quiet: dict[str, QuietHours]
    max_ahead_s: float = 7 * 86400.0

    @classmethod
    def from_settings(cls, settings: Any) -> SchedulePolicy:
        quiet = {name: q for name, route in settings.routes.items()
                 if (q := parse_quiet_hours(route.common.quiet_hours)) is not None and not q.empty}
        return cls(quiet, settings.dispatch.max_schedule_ahead_s)

    def wait(self, msg: Any, route: str | None, now: float) -> tuple[float, str] | None:
        """(due_at, reason) when ``msg`` (an OutboundSms) must wait, else None."""
        quiet = None if msg.bypass_quiet_hours else self.quiet.get(route or "")
        if msg.send_at is None and quiet is None:
            return None
        zones = recipient_zones(msg.recipient_time_zone, msg.recipient.e164) if quiet is not None else ()
        return due(msg.send_at, now, quiet, zones)
