"""One contract, every provider: through its simulator over real HTTP, the same six behaviours.

success, auth failure, throttled with Retry-After, 5xx, timeout, permanent rejection: each ends
in the right terminal record, reason and metric. The path is the worker's own (config -> route
senders -> pipeline), without Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator

import orjson
import pytest
from prometheus_client import REGISTRY

from connector.app import build_senders
from connector.config import load
from connector.pipeline import Pipeline
from connector.records import OutboundSms, Recipient, encode_outbound
from connector.routing import Router
from connector.devtools.simulators import SIMULATORS, Faults, serve


@dataclass(frozen=True)
class Case:
    provider: str
    recipient: Recipient
    rejected: Recipient          # a recipient the provider refuses permanently
    bad_credential: str          # the credential to spoil for the auth case
    extra: tuple[tuple[str, str], ...] = ()


CASES = [
    Case("smpp_rest", Recipient(phone="+447700900123"), Recipient(phone="+447700900666"), "api_key"),
    Case("revio", Recipient(phone="+14155550123"), Recipient(phone="+14155550666"), "password"),
    Case("ogangi", Recipient(phone="+582125550123"), Recipient(phone="+582125550666"), "private_key",
         (("sender", "24365"),)),
    Case("thingspace", Recipient(device_kind="IMEI", device_id="990000862471854"),
         Recipient(device_kind="MDN", device_id="4155550666"), "client_secret"),
]


@pytest.fixture(params=CASES, ids=lambda c: c.provider)
async def case(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Case, str, object]]:
    c: Case = request.param
    sim = SIMULATORS[c.provider](Faults(seed=1))
    runner = await serve(sim, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        yield c, f"http://127.0.0.1:{port}{sim.base_path}", sim
    finally:
        await runner.cleanup()


def pipeline_for(c: Case, base_url: str, *, spoil: bool = False) -> Pipeline:
    prefix = "SMS_CONNECTOR_ROUTES__R__"
    env = {prefix + "PROVIDER": c.provider, prefix + "BASE_URL": base_url,
           "SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS": "2", "SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S": "0.01",
           "SMS_CONNECTOR_HTTP__PROVIDER_TIMEOUT_S": "0.3"}
    for key, value in SIMULATORS[c.provider].default_credentials().items():
        env[prefix + key.upper()] = value + ("-wrong" if spoil and key == c.bad_credential else "")
    env.update({prefix + k.upper(): v for k, v in c.extra})
    settings = load(environ=env)
    senders = build_senders(settings)
    return Pipeline(senders, Router.from_settings(settings.routing, {"r": c.provider}))


async def run(p: Pipeline, recipient: Recipient, cid: str) -> tuple[str, dict]:  # type: ignore[type-arg]
    value = encode_outbound(OutboundSms(client_message_id=cid, recipient=recipient, text="Your code is 1234"))
    t = await p.outcome(value, int(time.time() * 1000))
    for sender in p.senders.values():
        await sender.aclose()
        await sender.transport.aclose()
    return t.ending, orjson.loads(t.value or b"{}")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_success(case: tuple[Case, str, object]) -> None:
    c, url, _ = case
    before = metric("sms_outbound_accepted_total", route="r", provider=c.provider)
    kind, rec = await run(pipeline_for(c, url), c.recipient, "ok-1")
    assert kind == "accepted", rec
    assert rec["provider"] == c.provider and rec["attempts"] == 1 and rec["segments"] == 1
    assert rec["provider_message_id"] or rec["provider_request_id"]
    assert metric("sms_outbound_accepted_total", route="r", provider=c.provider) == before + 1


@pytest.mark.parametrize("scenario, faults, reason", [
    ("5xx", {"error_rate": 1.0}, "unavailable"),
    ("timeout", {"timeout_rate": 1.0, "hang_s": 2.0}, "unavailable"),
    ("throttled", {"throttle_rate": 1.0, "retry_after_s": 1.0}, "throttled"),
])
async def test_transient_failures(case: tuple[Case, str, object], scenario: str, faults: dict[str, float],
                                  reason: str) -> None:
    c, url, sim = case
    p = pipeline_for(c, url)
    if c.provider in ("thingspace", "revio"):   # log in first, so the fault hits the send itself
        assert (await run(p, c.recipient, "warm-up"))[0] == "accepted"
        p = pipeline_for(c, url)
    sim.faults.update(faults)  # type: ignore[attr-defined]
    before = metric("sms_outbound_failed_total", route="r", provider=c.provider, reason=reason)
    t0 = time.monotonic()
    kind, rec = await run(p, c.recipient, f"{scenario}-1")
    elapsed = time.monotonic() - t0
    assert (kind, rec["reason"], rec["attempts"]) == ("failed", reason, 2), rec
    assert metric("sms_outbound_failed_total", route="r", provider=c.provider, reason=reason) == before + 1
    if scenario == "throttled":
        assert elapsed >= 0.9, "Retry-After was not honoured"


async def test_auth_failure(case: tuple[Case, str, object]) -> None:
    c, url, _ = case
    before = metric("sms_outbound_failed_total", route="r", provider=c.provider, reason="auth")
    kind, rec = await run(pipeline_for(c, url, spoil=True), c.recipient, "auth-1")
    assert (kind, rec["reason"]) == ("failed", "auth"), rec
    assert metric("sms_outbound_failed_total", route="r", provider=c.provider, reason="auth") == before + 1


async def test_permanent_rejection(case: tuple[Case, str, object]) -> None:
    c, url, _ = case
    kind, rec = await run(pipeline_for(c, url), c.rejected, "rejected-1")
    assert (kind, rec["reason"], rec["attempts"]) == ("failed", "rejected", 1), rec
    assert rec["provider_text"] or rec["provider_code"]
