"""dev's demo and its summary cover each cost guard (#18): the demo's kinds of message, and the
summary lines that say what each guard did. Pure: no broker."""

from __future__ import annotations

from collections import Counter

from connector.devtools.demo import DEMO_GUARDS_ENV, QUIET_ROUTE, generate
from connector.devtools.dev import guard_lines
from connector.devtools.stack import Tally
from connector.ops.snapshot import Snapshot
from connector.records import decode_outbound


def test_the_demo_has_messages_for_every_guard_and_labels_premium_devices_blocked() -> None:
    records = list(generate(1000, now=1_800_000_000.0))
    kinds = Counter(r.kind for r in records)
    assert all(kinds[k] for k in ("smart", "blocked", "scheduled", "held", "otp")), kinds
    for r in records:
        if r.kind in ("dlq",):
            continue
        msg = decode_outbound(r.value)
        e164 = msg.recipient.e164
        if e164 and (e164.startswith("+1900") or e164.startswith("+44909")):
            assert r.kind == "blocked", (r.demo_id, e164, r.kind)    # a device's MDN in +1 900 too
        if r.kind in ("held", "otp"):
            assert msg.route == QUIET_ROUTE and msg.bypass_quiet_hours == (r.kind == "otp")
    assert any(k.endswith(f"{QUIET_ROUTE.upper()}__RATE_LIMIT") for k in DEMO_GUARDS_ENV)
    assert DEMO_GUARDS_ENV["SMS_CONNECTOR_ROUTES__SMPP__OVER_BUDGET"] == "fail"


def test_the_summary_says_what_each_guard_did() -> None:
    tally = Tally(smart_encoded=3, segments_saved=4)
    tally.kinds.update({("smart", "accepted", ""): 3, ("smart", "failed", "budget"): 1,
                        ("blocked", "failed", "blocked-destination"): 2, ("scheduled", "accepted", ""): 5,
                        ("otp", "accepted", ""): 1, ("ok", "accepted", ""): 90})
    snap = Snapshot(deferred={"scheduled": 5, "quiet-hours": 2}, partitions_assigned=12,
                    budget_limit={("smpp", "ZA", "hour"): 20}, budget_spent={("smpp", "ZA", "hour"): 20},
                    rate_limit={QUIET_ROUTE: 10.0, "smpp": 0.0})
    text = "\n".join(guard_lines(tally, held=2, held_done=0, snap=snap, partitions=12))
    assert "smart                4  (smart encoding) accepted 3, failed budget 1" in text
    assert "blocked-destination 2" in text and "scheduled" in text and "(bypass_quiet_hours) accepted 1" in text
    assert "3 accepted messages sent as GSM-7, 4 segments saved" in text
    assert "reason=quiet-hours 2, reason=scheduled 5; still waiting for the end of quiet hours 2" in text
    assert "route smpp region ZA: 20 of 20 segments per hour spent" in text
    assert f"route {QUIET_ROUTE}: this worker sends at most 10 segments/s" in text and "12 of 12" in text
    assert "route smpp:" not in text.split("rate limit", 1)[1]            # no rate limit: no line
    assert " ok " not in text                                             # only the guards' kinds
    # dev's outcome lines are read back by tests/integration/test_prometheus.py: none of these is one
    assert not any(ln.split()[0] in ("accepted", "failed", "dead-lettered") for ln in text.splitlines())
