"""`check` report building, replay filter parsing and rendering: pure, no network."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
from types import SimpleNamespace
from typing import Any

import orjson

import pytest

from connector import contract as topics
from connector.providers import Capability
from connector.ops.check import (
    CheckReport,
    CheckRow,
    Status,
    check_route,
    config_rows,
    problem_row,
    render,
    render_plain,
    run_check,
)
from connector.config import ConfigError, RouteSettings, env_name, load
from connector.http import HttpRequest, HttpResponse
from connector.ops.replay import (
    HEADER_REPLAYED_FROM,
    matches,
    parse_filters,
    record_facts,
    replay_headers,
    topic_role,
)

SMPP = {"SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest",
        "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": "https://gw.example.com",
        "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "env:SMPP_API_KEY",
        "SMPP_API_KEY": "top-secret-key"}
ANSI = re.compile(r"\x1b\[")


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(None, env)
    return exc.value.problems


async def check(env: dict[str, str]) -> CheckReport:
    return await run_check(None, connect=False, environ=env)


# -- problems -> rows --------------------------------------------------------------------------

async def test_unknown_default_route_fails_with_the_fix() -> None:
    report = await check({**SMPP, "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "gateway"})
    [row] = report.failures
    assert (row.area, row.item) == ("config", "routing.default_route")
    assert "unknown route 'gateway'" in row.detail
    assert "add a [routes.gateway] section" in row.detail and "one of the configured routes: smpp" in row.detail
    assert report.exit_code == 1 and report.settings is None


async def test_unset_secret_reference_fails_naming_the_variable() -> None:
    env = {k: v for k, v in SMPP.items() if k != "SMPP_API_KEY"}
    [row] = (await check(env)).failures
    assert row.item == "routes.smpp.api_key"
    assert "Fix: set SMPP_API_KEY in the connector's environment" in row.detail


async def test_missing_required_credential_names_setting_and_env_var() -> None:
    env = {k: v for k, v in SMPP.items() if k != "SMS_CONNECTOR_ROUTES__SMPP__API_KEY"}
    [row] = (await check(env)).failures
    assert row.item == "routes.smpp.api_key"
    assert "required" in row.detail and "SMS_CONNECTOR_ROUTES__SMPP__API_KEY" in row.detail


@pytest.mark.parametrize("setting,value,bounds", [
    ("routes.smpp.concurrency", "0", "between 1 and 10000"),
    ("routes.smpp.batch_max", "5000", "between 1 and 1000"),
    ("inbound.status_poll_rate", "0", "between 0.01 and 1000"),   # polls per second per route
])
async def test_out_of_range_limits_fail_with_the_allowed_range(setting: str, value: str, bounds: str) -> None:
    [row] = (await check({**SMPP, env_name(setting): value})).failures
    assert row.item == setting and "out of range" in row.detail
    assert f"Fix: set {setting} to a value {bounds}" in row.detail


async def test_every_rate_limit_style_route_setting_is_range_checked() -> None:
    """Whatever rate / limit settings a route has (now or later), a value below the minimum fails."""
    checked = 0
    for f in dataclasses.fields(RouteSettings):
        lo = f.metadata.get("minimum")
        if lo is None or not any(w in f.name for w in ("rate", "limit", "concurrency", "batch", "burst")):
            continue
        [row] = (await check({**SMPP, env_name(f"routes.smpp.{f.name}"): str(lo - 1)})).failures
        assert row.item == f"routes.smpp.{f.name}" and "Fix: set" in row.detail
        checked += 1
    assert checked >= 2


def test_every_problem_kind_gets_a_specific_fix(tmp_path: Any) -> None:
    from pathlib import Path

    cases = {
        "routes.x.provider": ({"SMS_CONNECTOR_ROUTES__X__PROVIDER": "nope"}, "set routes.x.provider to one of: ogangi"),
        "dispatch.max_in_flight": ({"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": "lots"},
                                   "give dispatch.max_in_flight a value of type int"),
        "log.level": ({"SMS_CONNECTOR_LOG__LEVEL": "LOUD"}, "set log.level to one of: DEBUG, INFO"),
        "kafka.bogus": ({"SMS_CONNECTOR_KAFKA__BOGUS": "1"}, "remove kafka.bogus or correct its spelling"),
        "bogus": ({"SMS_CONNECTOR_BOGUS__X": "1"}, "remove the [bogus] section"),
        "routing.prefix_routes": ({**SMPP, "SMS_CONNECTOR_ROUTING__PREFIX_ROUTES": "+1=revio"},
                                  "add a [routes.revio] section, or change the rule +1=revio"),
        "routing.default_route": ({**SMPP, "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "gw"},
                                  "add a [routes.gw] section, or set routing.default_route to one of the configured"),
        "kafka.sasl_password": ({"SMS_CONNECTOR_KAFKA__SASL_PASSWORD": "file:/run/s/p"}, "mount the secret at /run/s/p"),
        "routes.smpp.api_key": ({**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "env:UNSET_KEY"},
                                "set UNSET_KEY in the connector's environment"),
        "routes.smpp.concurrency": ({**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__CONCURRENCY": "0"},
                                    "set routes.smpp.concurrency to a value between 1 and 10000"),
        "routes.smpp.base_url": ({k: v for k, v in SMPP.items() if not k.endswith("BASE_URL")},
                                 "set routes.smpp.base_url in the config file or SMS_CONNECTOR_ROUTES__SMPP__BASE_URL"),
    }
    for path, (env, fix) in cases.items():
        rows = [problem_row(p) for p in problems(env)]
        [row] = [r for r in rows if r.item == path] or [None]
        assert row is not None, (path, [r.item for r in rows])
        assert row.status is Status.FAIL and fix in row.detail.split("Fix: ", 1)[1], (path, row.detail)
    bad = Path(str(tmp_path)) / "bad.toml"
    bad.write_text("[kafka\n")
    table = Path(str(tmp_path)) / "table.toml"
    table.write_text("routes = { x = 1 }\n")
    for config_file, item, fix in [("/etc/c.toml", "config file /etc/c.toml", "check the path given with --config"),
                                   (str(bad), f"config file {bad}", "fix the TOML syntax"),
                                   (str(table), "routes.x", "make routes.x a TOML table")]:
        with pytest.raises(ConfigError) as exc:
            load(config_file, {})
        [row] = [problem_row(p) for p in exc.value.problems]
        assert row.item == item and fix in row.detail.split("Fix: ", 1)[1], (config_file, row.detail)


@pytest.mark.parametrize("setting, value, says", [
    ("SMS_CONNECTOR_ROUTES__SMPP__BASE_URL", "ftp://gw.example.com", "is not an http:// or https:// URL"),
    ("SMS_CONNECTOR_ROUTES__SMPP__BASE_URL", "file:///etc/passwd", "is not an http:// or https:// URL"),
    ("SMS_CONNECTOR_ROUTES__SMPP__BASE_URL", "gw.example.com", "is not an http:// or https:// URL"),
    ("SMS_CONNECTOR_ROUTES__SMPP__BASE_URL", "https:///path", "has no host"),
    ("SMS_CONNECTOR_CALLBACKS__PUBLIC_URL", "ws://connector.example.com", "is not an http:// or https:// URL"),
])
async def test_url_settings_must_be_http_or_https(setting: str, value: str, says: str) -> None:
    [row] = (await check({**SMPP, setting: value})).failures
    path = "routes.smpp.base_url" if "ROUTES" in setting else "callbacks.public_url"
    assert row.item == path and says in row.detail
    assert "Fix: set " + path + " to an http:// or https:// URL" in row.detail


@pytest.mark.parametrize("value", ["https://gw.example.com", "http://127.0.0.1:8080/api", "HTTPS://GW.EXAMPLE.COM"])
def test_http_and_https_urls_are_accepted(value: str) -> None:
    assert load(None, {**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": value}).routes["smpp"].provider.base_url == value


def test_all_problems_of_a_config_become_rows() -> None:
    found = problems({"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": "-5", "SMS_CONNECTOR_ROUTES__X__PROVIDER": "nope",
                      "SMS_CONNECTOR_KAFKA__SECURITY_PROTOCOL": "TLS"})
    rows = [problem_row(p) for p in found]
    assert {r.item for r in rows} == {"dispatch.max_in_flight", "routes.x.provider", "kafka.security_protocol"}
    assert all("Fix:" in r.detail for r in rows)


# -- a valid configuration -----------------------------------------------------------------------

async def test_valid_config_shows_redacted_settings_with_their_source() -> None:
    report = await check({**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__BATCH_MAX": "50"})
    assert report.ok and report.exit_code == 0
    rows = {path: (value, source) for path, value, source in report.settings_rows()}
    assert rows["routes.smpp.api_key"] == ("*** (env:SMPP_API_KEY)", "env")
    assert rows["routes.smpp.batch_max"] == ("50", "env")
    assert rows["kafka.bootstrap_servers"] == ("localhost:9092", "default")
    out = render_plain(report)
    assert "top-secret-key" not in out and "*** (env:SMPP_API_KEY)" in out


async def test_settings_from_a_file_are_marked_file(tmp_path: object) -> None:
    from pathlib import Path

    cfg = Path(str(tmp_path)) / "c.toml"
    cfg.write_text('[kafka]\nlinger_ms = 20\nidempotent_producer = false\n[routes.gw]\nprovider = "smpp_rest"\n'
                   'base_url = "https://gw"\napi_key = "literal-key"\nbatch_max = 5\n')
    report = await run_check(str(cfg), connect=False, environ={"SMS_CONNECTOR_ROUTES__GW__CONCURRENCY": "8",
                                                               "SMS_CONNECTOR_ROUTES__GW__BATCH_MAX": "7"})
    rows = {path: (value, source) for path, value, source in report.settings_rows()}
    assert rows["routes.gw.api_key"] == ("***", "file")
    assert rows["routes.gw.concurrency"] == ("8", "env")
    assert rows["routes.gw.batch_max"] == ("7", "env")          # the environment wins over the file
    assert rows["kafka.linger_ms"] == ("20", "file") and rows["kafka.idempotent_producer"] == ("false", "file")
    assert rows["routes.gw.channel"] == ("sms", "default")
    assert "literal-key" not in render_plain(report)


def test_accepted_but_unintended_settings_are_warnings() -> None:
    settings = load(None, {"SMS_CONNECTOR_ROUTES__R__PROVIDER": "revio", "SMS_CONNECTOR_ROUTES__R__USERNAME": "u",
                           "SMS_CONNECTOR_ROUTES__R__PASSWORD": "p", "SMS_CONNECTOR_ROUTES__R__CLIENT": "c",
                           "SMS_CONNECTOR_ROUTES__R__BATCH_MAX": "50",
                           "SMS_CONNECTOR_ROUTES__O__PROVIDER": "ogangi", "SMS_CONNECTOR_ROUTES__O__BASE_URL": "https://o",
                           "SMS_CONNECTOR_ROUTES__O__PUBLIC_KEY": "pk", "SMS_CONNECTOR_ROUTES__O__PRIVATE_KEY": "k",
                           "SMS_CONNECTOR_ROUTES__O__INSTANCE_ID": "1", "SMS_CONNECTOR_ROUTES__O__SEGMENT_POLICY": "split",
                           "SMS_CONNECTOR_ROUTES__O__CONCURRENCY": "500",
                           "SMS_CONNECTOR_DISPATCH__IDEMPOTENCY_WINDOW_S": "60"})
    warnings = {r.item: r.detail for r in config_rows(settings) if r.status is Status.WARN}
    assert set(warnings) == {"routing.default_route", "routes.r.batch_max", "routes.o.segment_policy",
                             "routes.o.concurrency", "dispatch.idempotency_window_s"}
    assert "at most 1" in warnings["routes.r.batch_max"]
    assert "up to 90 s in the retry topic" in warnings["dispatch.idempotency_window_s"]


async def test_no_routes_fails() -> None:
    report = await check({})
    assert [r.item for r in report.failures] == ["routes"]


async def test_connect_is_skipped_when_the_config_is_invalid() -> None:
    report = await run_check(None, connect=True, environ={"SMS_CONNECTOR_LOG__LEVEL": "LOUD"})
    assert [r.status for r in report.rows] == [Status.FAIL, Status.SKIP]


# -- rendering -----------------------------------------------------------------------------------

def sample_report() -> CheckReport:
    return CheckReport(rows=[CheckRow("config", "settings", Status.OK, "valid: 1 route(s)"),
                             CheckRow("kafka", "broker", Status.FAIL, "broker unreachable at k:9092. Fix: check it"),
                             CheckRow("route a", "credentials", Status.WARN, "no session"),
                             CheckRow("route b", "credentials", Status.SKIP, "not checkable without sending")],
                       settings={"log": {"level": "INFO"}, "routes": {}}, connected=True)


def test_table_rendering_without_colour() -> None:
    buf = io.StringIO()
    render(sample_report(), buf, plain=False, width=160)
    out = buf.getvalue()
    assert not ANSI.search(out), "a non-terminal file must get no escape codes"
    assert "┃ status" in out and "sms-connector check" in out
    for text in ("FAIL", "broker unreachable at k:9092", "WARN", "SKIP", "Effective settings", "log.level"):
        assert text in out
    assert "NOT ready: 1 failed, 1 warning(s), 1 ok, 1 skipped" in out


def test_plain_rendering_is_the_default_off_a_terminal() -> None:
    buf = io.StringIO()
    render(sample_report(), buf)
    lines = buf.getvalue().splitlines()
    assert lines[1].split()[:3] == ["FAIL", "kafka", "broker"]
    assert "  log.level  INFO  [default]" in lines
    assert lines[-1].startswith("NOT ready")
    assert not ANSI.search(buf.getvalue())


def test_settings_can_be_left_out() -> None:
    buf = io.StringIO()
    render(sample_report(), buf, plain=True, show_settings=False)
    assert "Effective settings" not in buf.getvalue()


# -- replay filters and records ------------------------------------------------------------------

def test_filter_parsing() -> None:
    assert parse_filters([]) == {}
    assert parse_filters(["reason=invalid-record"]) == {"reason": frozenset({"invalid-record"})}
    assert parse_filters(["Route=smpp,revio", "route=ogangi", "id=m-1"]) == {
        "route": frozenset({"smpp", "revio", "ogangi"}), "client_message_id": frozenset({"m-1"})}


@pytest.mark.parametrize("bad,message", [("reason", "not FIELD=VALUE"), ("=x", "not FIELD=VALUE"),
                                         ("colour=red", "unknown filter field 'colour'"), ("reason=", "no value"),
                                         ("reason= , ", "no value")])
def test_bad_filters_say_what_is_wrong(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_filters([bad])


def test_facts_and_matching() -> None:
    dlq = record_facts("dlq", b"+14155550101", b"{not json", [(topics.HEADER_ERROR_REASON, b"invalid-record")])
    assert dlq["reason"] == "invalid-record" and dlq["key"] == "+14155550101" and dlq["route"] is None
    failed = record_facts("failed", None, b'{"reason":"unavailable","route":"smpp","provider":"smpp_rest",'
                                          b'"client_message_id":"m-1"}', [])
    assert failed == {"reason": "unavailable", "provider": "smpp_rest", "route": "smpp",
                      "client_message_id": "m-1", "key": None}
    assert matches(failed, parse_filters(["reason=unavailable,throttled", "route=smpp"]))
    assert not matches(failed, parse_filters(["reason=unavailable", "route=revio"]))
    assert matches(dlq, {}) and not matches(dlq, parse_filters(["route=smpp"]))


def test_replay_headers_drop_what_the_pipeline_added() -> None:
    original = [("trace", b"t-1"), (topics.HEADER_SOURCE_OFFSET, b"7"), (topics.HEADER_ERROR_REASON, b"internal"),
                (HEADER_REPLAYED_FROM, b"old:0:1"), ("trace", b"t-2"),
                # a message dead-lettered during a retry pass: replayed, it starts again as a first pass
                (topics.HEADER_RETRY_TOKEN, b"abc"), (topics.HEADER_RETRY_ATTEMPTS, b"8")]
    assert replay_headers(original, "sms.outbound.dlq", 2, 15) == [
        ("trace", b"t-1"), ("trace", b"t-2"), (HEADER_REPLAYED_FROM, b"sms.outbound.dlq:2:15")]


def test_topic_role() -> None:
    assert topic_role("dlq") == ("dlq", "sms.outbound.dlq")
    assert topic_role("sms.outbound.failed") == ("failed", "sms.outbound.failed")
    with pytest.raises(ValueError, match="replay reads sms.outbound.dlq or sms.outbound.failed"):
        topic_role("sms.outbound")


# -- route probes, with an injected transport (no network) --------------------------------------

def probe_sender(provider: str, extra: dict[str, str], handler: Any) -> Any:
    from connector.app import build_senders
    from connector.transport import HttpTransport

    env = {f"SMS_CONNECTOR_ROUTES__R__{k.upper()}": v for k, v in {"provider": provider, **extra}.items()}
    [sender] = build_senders(load(None, env)).values()
    return SimpleNamespace(provider=sender.provider, transport=HttpTransport(handler=handler))


def answering(status: int, body: bytes = b"", seen: list[HttpRequest] | None = None) -> Any:
    async def handler(request: HttpRequest) -> HttpResponse:
        if seen is not None:
            seen.append(request)
        return HttpResponse(status, body, {"content-type": "application/json"})
    return handler


SMPP_ROUTE = {"base_url": "https://gw", "api_key": "k"}
OGANGI_ROUTE = {"base_url": "https://og", "public_key": "pub", "private_key": "priv", "instance_id": "7"}


@pytest.mark.parametrize("status,expected,text", [
    (400, Status.OK, "API key accepted"), (200, Status.OK, "nothing sent"),
    (401, Status.FAIL, "Fix: check routes.r.api_key"), (403, Status.FAIL, "credentials refused"),
    (503, Status.FAIL, "cannot reach the provider"), (404, Status.FAIL, "refused the check call"),
])
async def test_smpp_probe_posts_an_empty_batch(status: int, expected: Status, text: str) -> None:
    seen: list[HttpRequest] = []
    row = await check_route("r", probe_sender("smpp_rest", SMPP_ROUTE, answering(status, b"{}", seen)), 1.0)
    assert row.status is expected and text in row.detail, row.detail
    [request] = seen
    assert orjson.loads(request.body) == {"Messages": []}
    assert request.headers["Authorization"] == "Bearer k"


async def test_ogangi_probe_is_a_signed_one_result_mo_read() -> None:
    seen: list[HttpRequest] = []
    ok = b"<input>x</input><status>OK</status><description>Completed</description><result><MOMessageList>" \
         b"<records>0</records></MOMessageList></result>"
    row = await check_route("r", probe_sender("ogangi", OGANGI_ROUTE, answering(200, ok, seen)), 1.0)
    assert row.status is Status.OK
    assert "/rest/api/tools/getMOMessages/7/1/1/null/pub/" in seen[0].url and seen[0].method == "GET"
    bad = b"<status>BAD_SIGNATURE</status><description>Invalid signature</description>"
    row = await check_route("r", probe_sender("ogangi", OGANGI_ROUTE, answering(200, bad)), 1.0)
    assert row.status is Status.FAIL and "routes.r.private_key" in row.detail


async def test_a_provider_that_does_not_answer_in_time_fails() -> None:
    async def hang(request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(10)
        raise AssertionError

    row = await check_route("r", probe_sender("smpp_rest", SMPP_ROUTE, hang), 0.1)
    assert row.status is Status.FAIL and "did not answer within 0.1s" in row.detail


async def test_static_credentials_without_a_read_call_are_skipped() -> None:
    sender = probe_sender("smpp_rest", SMPP_ROUTE, answering(500))
    # a provider that declares no connection check (static credentials, no read-only call)
    sender.provider.capabilities = frozenset({Capability.SEND})
    row = await check_route("r", sender, 1.0)
    assert row.status is Status.SKIP and "not checkable without sending" in row.detail


async def test_revio_without_sessions_still_checks_credentials_with_sessions_create() -> None:
    seen: list[HttpRequest] = []
    route = {"username": "u", "password": "p", "client": "c", "use_sessions": "false"}
    await check_route("r", probe_sender("revio", route, answering(500, b"", seen)), 1.0)
    assert b"Sessions_Create" in seen[0].body or "Sessions_Create" in seen[0].headers.get("SOAPAction", "")


def _route(name: str, **extra: str) -> dict[str, str]:
    p = f"SMS_CONNECTOR_ROUTES__{name.upper()}__"
    return {p + "PROVIDER": "smpp_rest", p + "BASE_URL": "https://gw", p + "API_KEY": "k",
            **{p + k.upper(): v for k, v in extra.items()}}


def test_quiet_hours_that_cannot_do_what_they_seem_are_warnings() -> None:
    settings = load(None, {**_route("a", quiet_hours="08:00-08:00"), **_route("b", quiet_hours="06:00-03:00"),
                           **_route("c", quiet_hours="21:00-08:00", failover_route="d"), **_route("d"),
                           **_route("dev", quiet_hours="22:00-07:00"),
                           "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "a", "SMS_CONNECTOR_ROUTING__DEVICE_ROUTE": "dev"})
    warnings = {(r.area, r.item): r.detail for r in config_rows(settings) if r.status is Status.WARN}
    assert "holds nothing" in warnings[("route a", "routes.a.quiet_hours")]
    assert "21 quiet hours a day" in warnings[("route b", "routes.b.quiet_hours")]
    assert "failover route d has none" in warnings[("route c", "routes.c.quiet_hours")]
    assert "recipient_time_zone" in warnings[("route dev", "routes.dev.quiet_hours")]
    assert ("route d", "routes.d.quiet_hours") not in warnings
    ok = load(None, {**_route("a", quiet_hours="21:00-08:00")})
    assert not [r for r in config_rows(ok) if r.status is Status.WARN]


def test_quiet_hours_longer_than_a_message_may_wait_are_a_warning() -> None:
    """A wait past dispatch.max_schedule_ahead_s fails the message (reason invalid): quiet hours
    longer than it turn every message due as they start into a failure."""
    env = {**_route("a", quiet_hours="21:00-08:00"), "SMS_CONNECTOR_DISPATCH__MAX_SCHEDULE_AHEAD_S": "3600"}
    warnings = {(r.area, r.item): r.detail for r in config_rows(load(None, env)) if r.status is Status.WARN}
    assert "longer than dispatch.max_schedule_ahead_s" in warnings[("route a", "routes.a.quiet_hours")]
    env["SMS_CONNECTOR_DISPATCH__MAX_SCHEDULE_AHEAD_S"] = "39600"       # 11 h: the quiet hours fit
    assert not [r for r in config_rows(load(None, env)) if r.status is Status.WARN]


def test_quiet_hours_with_seconds_are_checked_to_the_second() -> None:
    settings = load(None, {**_route("a", quiet_hours="21:00-08:00:30", failover_route="b"),
                           **_route("b", quiet_hours="21:00-08:00"), **_route("c", quiet_hours="08:00:30-08:00:30"),
                           "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "a"})
    warnings = {(r.area, r.item): r.detail for r in config_rows(settings) if r.status is Status.WARN}
    assert "21:00-08:00:30, but its failover route b has 21:00-08:00" in warnings[("route a", "routes.a.quiet_hours")]
    assert "08:00:30-08:00:30: starts when it ends" in warnings[("route c", "routes.c.quiet_hours")]


def test_malformed_quiet_hours_are_a_problem_with_the_fix() -> None:
    [problem] = problems(_route("a", quiet_hours="9pm-8am"))
    assert problem.path == "routes.a.quiet_hours" and "HH:MM-HH:MM" in problem.message and "21:00-08:00" in problem.fix
    [problem] = problems(_route("a", quiet_hours="21:00-08:00:75"))
    assert "HH:MM:SS" in problem.message and "HH:MM:SS" in problem.fix
# -- spend budgets ----------------------------------------------------------------------------------

def budget_warnings(**route: str) -> dict[str, str]:
    env = {**SMPP, **{f"SMS_CONNECTOR_ROUTES__SMPP__{k.upper()}": v for k, v in route.items()}}
    return {r.item: r.detail for r in config_rows(load(None, env)) if r.status is Status.WARN}


def test_budget_settings_that_are_probably_not_meant_are_warnings() -> None:
    w = budget_warnings(budget_segments_per_hour="1000", budget_segments_per_day="500")
    assert "below the hourly one" in w["routes.smpp.budget_segments_per_day"]
    w = budget_warnings(budget_regions="NG=100/50", rate_limit="5")
    assert "below the hourly one" in w["routes.smpp.budget_regions"]
    w = budget_warnings(budget_segments_per_hour="3000", rate_limit="50", over_budget="fail")
    assert "in 1.0 minutes, then fails every message" in w["routes.smpp.rate_limit"]
    # a hold of up to a day outlives the default 1 h idempotency window
    w = budget_warnings(budget_segments_per_day="100000")
    assert "up to 86400 s in the retry topic" in w["dispatch.idempotency_window_s"]
    # consistent: hourly x 24 above the daily budget is fine, so is a rate that takes an hour or more
    assert budget_warnings(budget_segments_per_hour="1000", budget_segments_per_day="20000",
                           rate_limit="0.5", over_budget="fail") == {}


def test_unreadable_region_budgets_are_a_problem() -> None:
    found = problems({**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__BUDGET_REGIONS": "NG:100"})
    assert any("routes.smpp.budget_regions" in p.path and "REGION=PER_HOUR/PER_DAY" in p.fix for p in found)
