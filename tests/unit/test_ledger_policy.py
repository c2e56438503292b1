"""The pipeline's ledger decisions: done -> skip; intent -> the route's in-doubt policy; new -> intent."""

from __future__ import annotations

import time

import orjson
import pytest

from connector.app import build_senders
from connector.config import load
from connector.http import HttpRequest, HttpResponse
from connector.pipeline import Pipeline
from connector.records import OutboundSms, Recipient, encode_outbound
from connector.routing import Router
from connector.transport import HttpTransport


class FakeLedger:
    """Stands in for a PartitionLedger (unit test of the pipeline's decisions only)."""

    def __init__(self, state: str | None, outcome: str | None = None) -> None:
        self.known = state
        self.recorded = outcome
        self.intents: list[str] = []

    def state(self, cid: str) -> str | None:
        return self.known

    def outcome(self, cid: str) -> str | None:
        return self.recorded

    async def intent(self, cid: str, route: str | None) -> None:
        self.intents.append(cid)


def pipeline(in_doubt: str, calls: list[HttpRequest]) -> Pipeline:
    prefix = "SMS_CONNECTOR_ROUTES__R__"
    settings = load(environ={prefix + "PROVIDER": "smpp_rest", prefix + "BASE_URL": "http://sim", prefix + "API_KEY": "k",
                             prefix + "IN_DOUBT": in_doubt})
    senders = build_senders(settings)

    async def handler(request: HttpRequest) -> HttpResponse:
        calls.append(request)
        cid = orjson.loads(request.body)["Messages"][0]["clientMessageId"]
        return HttpResponse(200, orjson.dumps({"messages": [{"apiMessageId": "a1", "accepted": True,
                                                              "msg": {"clientMessageId": cid}}]}))

    for s in senders.values():
        s.transport = HttpTransport(handler=handler)
    return Pipeline(senders, Router.from_settings(settings.routing, {"r": "smpp_rest"}))


VALUE = encode_outbound(OutboundSms(client_message_id="m-1", recipient=Recipient(phone="+14155550123"), text="hi"))


@pytest.mark.parametrize("state, in_doubt, kind, reason, calls, intents", [
    ("done", "resend", "skip", None, 0, 0),
    ("intent", "resend", "accepted", None, 1, 0),
    ("intent", "fail", "failed", "in-doubt", 0, 0),
    (None, "fail", "accepted", None, 1, 1),
])
async def test_ledger_decisions(state: str | None, in_doubt: str, kind: str, reason: str | None, calls: int,
                                intents: int) -> None:
    made: list[HttpRequest] = []
    ledger = FakeLedger(state)
    t = await pipeline(in_doubt, made).outcome(VALUE, int(time.time() * 1000), ledger)  # type: ignore[arg-type]
    assert (t.kind, t.reason, len(made), len(ledger.intents)) == (kind, reason, calls, intents)
    if kind in ("accepted", "failed"):
        assert t.ledger_cid == "m-1"


@pytest.mark.parametrize("outcome, replayed, kind, calls", [
    ("failed", True, "accepted", 1),     # dlq replay after a fix: sent again
    ("failed", False, "skip", 0),        # a crash replay of a failed message: no-op
    ("accepted", True, "skip", 0),       # replaying an accepted message never sends it twice
])
async def test_a_replayed_failure_is_sent_again_but_never_an_accepted_message(outcome: str, replayed: bool,
                                                                              kind: str, calls: int) -> None:
    made: list[HttpRequest] = []
    ledger = FakeLedger("done", outcome)
    t = await pipeline("resend", made).outcome(VALUE, int(time.time() * 1000), ledger, replayed)  # type: ignore[arg-type]
    assert (t.kind, len(made)) == (kind, calls)
