"""Smart encoding and destination rules against every simulator over real HTTP (config -> route
senders -> pipeline, no Kafka): the provider receives the GSM-7 form of a look-alike text, and
never hears of a blocked destination."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

import orjson
import pytest
from prometheus_client import REGISTRY

from connector.app import build_senders
from connector.config import load
from connector.devtools.simulators import SIMULATORS, Faults, serve
from connector.pipeline import Pipeline
from connector.records import OutboundSms, Recipient, encode_outbound
from connector.routing import Router

# provider -> (a recipient it accepts, a premium-rate recipient, route settings it needs)
PROVIDERS: dict[str, tuple[Recipient, Recipient, dict[str, str]]] = {
    "smpp_rest": (Recipient(phone="+447700900123"), Recipient(phone="+449098790123"), {}),
    "revio": (Recipient(phone="+14155550123"), Recipient(phone="+19005550123"), {}),
    "ogangi": (Recipient(phone="+582125550123"), Recipient(phone="+19005550123"), {"sender": "24365"}),
    # ThingSpace sends 7-bit (GSM-7) by default; a device addressed by its MDN is a +1 number
    "thingspace": (Recipient(device_kind="IMEI", device_id="990000862471854"),
                   Recipient(device_kind="MDN", device_id="9005550123"), {}),
}
# 95 characters; UCS-2 because of its quotes and dash: 2 segments as written, 1 as GSM-7
TEXT = "Don\u2019t forget: your appointment\u2019s tomorrow at 10:30 \u2014 reply \u201cYES\u201d to confirm, ref 1234."
GSM7_TEXT = "Don't forget: your appointment's tomorrow at 10:30 - reply \"YES\" to confirm, ref 1234."


@pytest.fixture(params=sorted(PROVIDERS))
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Any, str]]:
    name = request.param
    simulator = SIMULATORS[name](Faults(seed=1))
    runner = await serve(simulator, "127.0.0.1", 0)
    try:
        yield name, simulator, f"http://127.0.0.1:{runner.addresses[0][1]}{simulator.base_path}"
    finally:
        await runner.cleanup()


async def send(provider: str, url: str, recipient: Recipient, text: str, cid: str, **route: str) -> dict[str, Any]:
    prefix = "SMS_CONNECTOR_ROUTES__R__"
    env = {prefix + "PROVIDER": provider, prefix + "BASE_URL": url}
    env.update({prefix + k.upper(): v for k, v in SIMULATORS[provider].default_credentials().items()})
    env.update({prefix + k.upper(): v for k, v in {**PROVIDERS[provider][2], **route}.items()})
    settings = load(environ=env)
    senders = build_senders(settings)
    p = Pipeline(senders, Router.from_settings(settings.routing, {"r": provider}))
    try:
        verdict = await p.outcome(encode_outbound(OutboundSms(client_message_id=cid, recipient=recipient, text=text)),
                                  int(time.time() * 1000))
    finally:
        for s in senders.values():
            await s.aclose()
            await s.transport.aclose()
    return orjson.loads(verdict.value or b"{}")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_provider_receives_the_gsm7_form(sim: tuple[str, Any, str]) -> None:
    provider, simulator, url = sim
    recipient = PROVIDERS[provider][0]
    saved = metric("sms_outbound_segments_saved_total", route="r")
    smart = metric("sms_outbound_smart_encoded_total", route="r")
    rec = await send(provider, url, recipient, TEXT, "smart-1", smart_encoding="true")
    assert rec["outcome"] == "accepted", rec
    assert list(simulator.stats.texts) == [GSM7_TEXT]
    assert (rec["encoding"], rec["segments"], rec["original_encoding"], rec["original_segments"]) == \
        ("gsm7", 1, "ucs2", 2)
    assert metric("sms_outbound_segments_saved_total", route="r") == saved + 1
    assert metric("sms_outbound_smart_encoded_total", route="r") == smart + 1


async def test_without_smart_encoding_the_text_is_sent_as_written(sim: tuple[str, Any, str]) -> None:
    provider, simulator, url = sim
    rec = await send(provider, url, PROVIDERS[provider][0], TEXT, "as-written-1")
    assert "original_segments" not in rec and "original_encoding" not in rec
    if provider == "thingspace":     # 7-bit only: a UCS-2 text cannot be sent at all
        assert (rec["outcome"], rec["reason"]) == ("failed", "invalid"), rec
        assert simulator.stats.requests == 0
    else:
        assert (rec["outcome"], rec["encoding"], rec["segments"]) == ("accepted", "ucs2", 2), rec
        assert list(simulator.stats.texts) == [TEXT]


async def test_a_text_needing_ucs2_is_untouched_with_its_curly_quotes(sim: tuple[str, Any, str]) -> None:
    provider, simulator, url = sim
    if provider == "thingspace":
        pytest.skip("ThingSpace 7-bit cannot send UCS-2 text")
    text = "\u201cPrivet\u201d \u2014 \u041f\u0440\u0438\u0432\u0435\u0442"
    rec = await send(provider, url, PROVIDERS[provider][0], text, "ucs2-1", smart_encoding="true")
    assert (rec["outcome"], rec["encoding"]) == ("accepted", "ucs2"), rec
    assert "original_segments" not in rec
    assert list(simulator.stats.texts) == [text]


async def test_a_blocked_destination_fails_without_a_provider_call(sim: tuple[str, Any, str]) -> None:
    provider, simulator, url = sim
    premium = PROVIDERS[provider][1]
    failed = metric("sms_outbound_failed_total", route="r", provider=provider, reason="blocked-destination")
    blocked = metric("sms_outbound_blocked_total", route="r", rule="block_number_types")
    rec = await send(provider, url, premium, "Your code is 1234", "premium-1")       # the default rules
    assert (rec["outcome"], rec["reason"], rec["attempts"]) == ("failed", "blocked-destination", 0), rec
    assert "premium-rate" in rec["error"]
    assert simulator.stats.requests == 0, "the provider was called"
    assert metric("sms_outbound_failed_total", route="r", provider=provider, reason="blocked-destination") == failed + 1
    assert metric("sms_outbound_blocked_total", route="r", rule="block_number_types") == blocked + 1


async def test_region_rules_hold_at_the_provider(sim: tuple[str, Any, str]) -> None:
    provider, simulator, url = sim
    recipient = PROVIDERS[provider][0]
    if recipient.phone is None:
        pytest.skip("an IMEI is not a number: not subject to the rules")
    rec = await send(provider, url, recipient, "hello", "region-1", allow_regions="DE")
    assert (rec["outcome"], rec["reason"]) == ("failed", "blocked-destination"), rec
    assert simulator.stats.requests == 0
    rec = await send(provider, url, PROVIDERS[provider][1], "hello", "premium-allowed-1", block_number_types="")
    assert rec["outcome"] == "accepted", rec     # premium-rate numbers go out when the operator says so


async def test_a_failover_route_applies_its_own_rules() -> None:
    bad, good = SIMULATORS["smpp_rest"](Faults(seed=1, error_rate=1.0)), SIMULATORS["smpp_rest"](Faults(seed=1))
    runners = [await serve(s, "127.0.0.1", 0) for s in (bad, good)]
    try:
        env: dict[str, str] = {"SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "a",
                               "SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS": "2",
                               "SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S": "0.01"}
        for route, runner, extra in (("a", runners[0], {"failover_route": "b", "breaker_min_calls": "2",
                                                        "breaker_open_s": "60"}),
                                     ("b", runners[1], {"allow_regions": "GB", "smart_encoding": "true"})):
            prefix = f"SMS_CONNECTOR_ROUTES__{route.upper()}__"
            env.update({prefix + "PROVIDER": "smpp_rest", prefix + "BASE_URL": f"http://127.0.0.1:{runner.addresses[0][1]}",
                        prefix + "API_KEY": SIMULATORS["smpp_rest"].default_credentials()["api_key"]})
            env.update({prefix + k.upper(): v for k, v in extra.items()})
        settings = load(environ=env)
        senders = build_senders(settings)
        p = Pipeline(senders, Router.from_settings(settings.routing, {"a": "smpp_rest", "b": "smpp_rest"}))

        async def one(cid: str, phone: str, text: str = "hello") -> dict[str, Any]:
            value = encode_outbound(OutboundSms(client_message_id=cid, recipient=Recipient(phone=phone), text=text))
            return orjson.loads((await p.outcome(value, int(time.time() * 1000))).value or b"{}")

        first = await one("opens-the-circuit", "+4915112345678")   # route a: 2 failed calls, circuit open
        assert (first["route"], first["reason"]) == ("a", "unavailable"), first
        de = await one("de", "+4915112345678")                       # b takes it, and refuses DE
        assert (de["route"], de["outcome"], de["reason"]) == ("b", "failed", "blocked-destination"), de
        gb = await one("gb", "+447400123456", TEXT)                 # b takes it, in GSM-7
        assert (gb["route"], gb["outcome"], gb["encoding"], gb["original_segments"]) == ("b", "accepted", "gsm7", 2)
        assert list(good.stats.texts) == [GSM7_TEXT]
        for s in senders.values():
            await s.aclose()
            await s.transport.aclose()
    finally:
        for runner in runners:
            await runner.cleanup()
