"""`check` and `dlq replay` as a user runs them (click commands; cli.py registers the same objects)."""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Iterator

import click
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner, Result

from connector import contract as topics
from connector.ops.check import check_command
from connector.config import load
from connector.devtools.embedded_broker import free_port
from connector.kafka import client_options, delete_topics
from connector.ops.replay import dlq_group
from connector.devtools.simulators import SIMULATORS
from connector.devtools.stack import LocalStack, kafka_env, worker_env

pytestmark = pytest.mark.e2e

cli = click.Group("sms-connector", commands={"check": check_command, "dlq": dlq_group})
SMPP = {"SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest",
        "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": "https://gw.example.com",
        "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "env:SMPP_API_KEY",
        "SMPP_API_KEY": "very-secret-key"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("SMS_CONNECTOR_") or name == "SMPP_API_KEY":
            monkeypatch.delenv(name)
    yield


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def rows(output: str) -> list[list[str]]:
    """The report's rows (plain output: STATUS AREA... CHECK DETAIL)."""
    return [line.split() for line in output.splitlines() if line[:4] in ("OK  ", "FAIL", "WARN", "SKIP")]


@pytest.mark.parametrize("command", [["check"], ["dlq"], ["dlq", "replay"]])
def test_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize("env,setting,fix", [
    ({**SMPP, "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "gateway"}, "routing.default_route",
     "add a [routes.gateway] section"),
    ({k: v for k, v in SMPP.items() if k != "SMPP_API_KEY"}, "routes.smpp.api_key", "set SMPP_API_KEY"),
    ({k: v for k, v in SMPP.items() if k != "SMS_CONNECTOR_ROUTES__SMPP__API_KEY"}, "routes.smpp.api_key",
     "SMS_CONNECTOR_ROUTES__SMPP__API_KEY"),
    ({**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__CONCURRENCY": "0"}, "routes.smpp.concurrency", "between 1 and 10000"),
    ({**SMPP, "SMS_CONNECTOR_INBOUND__STATUS_POLL_RATE": "-1"}, "inbound.status_poll_rate", "between 0.01 and 1000"),
], ids=["unknown-route", "unset-secret", "missing-credential", "concurrency", "poll-rate"])
def test_check_fails_on_a_bad_setting_and_says_what_to_fix(env: dict[str, str], setting: str, fix: str) -> None:
    result = invoke("check", env=env)
    assert result.exit_code == 1
    [row] = [r for r in rows(result.output) if r[0] == "FAIL"]
    assert row[2] == setting
    assert "Fix:" in result.output and fix in result.output
    assert "Traceback" not in result.output and "very-secret-key" not in result.output


def test_valid_config_passes_offline_and_redacts_secrets() -> None:
    result = invoke("check", env=SMPP)
    assert result.exit_code == 0, result.output
    assert "routes.smpp.api_key" in result.output and "*** (env:SMPP_API_KEY)" in result.output
    assert "very-secret-key" not in result.output
    assert result.output.splitlines()[-1].startswith("ready:")


def test_unreachable_broker_fails_with_the_address_and_what_to_check() -> None:
    port = free_port()
    result = invoke("check", "--connect", "--timeout", "3", "--no-settings",
                    env={**SMPP, "SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                         "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.exit_code == 1
    assert f"broker unreachable at 127.0.0.1:{port}" in result.output
    assert "check kafka.bootstrap_servers / security settings" in result.output
    assert "cannot reach the provider" in result.output and "check routes.smpp.base_url" in result.output
    assert "Effective settings" not in result.output


@pytest.fixture
async def dev_stack(broker: LocalStack) -> AsyncIterator[LocalStack]:
    s = broker
    await asyncio.gather(*(s.start_simulator(name) for name in SIMULATORS))
    try:
        yield s
    finally:
        await s.stop()


async def test_check_connect_is_all_green_for_the_dev_configuration_and_catches_bad_credentials(
        dev_stack: LocalStack) -> None:
    assert dev_stack.broker is not None
    env = worker_env(dev_stack.kafka, dev_stack.sim_urls, http_port=0)
    stats_before = {name: await dev_stack.sim_stats(name) for name in SIMULATORS}

    result = await asyncio.to_thread(invoke, "check", "--connect", env=env)
    assert result.exit_code == 0, result.output
    found = rows(result.output)
    assert found and all(r[0] == "OK" for r in found), result.output
    assert {tuple(r[1:4]) for r in found} >= {("kafka", "broker", "reachable"), ("topics", "contract", "all"),
                                              *((f"route", name, "credentials") for name in ("smpp", "revio",
                                                                                            "ogangi", "thingspace"))}
    secrets = load(None, env).secrets()
    assert len(secrets) >= 5 and not [s for s in secrets if s in result.output], "a secret was printed"
    for name in SIMULATORS:   # authenticated only: no simulator took a message
        stats = await dev_stack.sim_stats(name)
        assert stats["accepted"] == stats_before[name]["accepted"] and stats["messages"] == stats_before[name]["messages"]

    wrong = {**env, "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "wrong", "SMS_CONNECTOR_ROUTES__OGANGI__PRIVATE_KEY": "wrong",
             "SMS_CONNECTOR_ROUTES__REVIO__PASSWORD": "wrong", "SMS_CONNECTOR_ROUTES__THINGSPACE__PASSWORD": "wrong"}
    result = await asyncio.to_thread(invoke, "check", "--connect", "--no-settings", env=wrong)
    assert result.exit_code == 1
    failed = {r[2] for r in rows(result.output) if r[0] == "FAIL"}
    assert failed == {"smpp", "revio", "ogangi", "thingspace"}, result.output
    for setting in ("routes.smpp.api_key", "routes.ogangi.private_key", "routes.revio.password",
                    "routes.thingspace.password"):
        assert setting in result.output
    assert "five refused logins" in result.output


async def test_dlq_replay_command(broker: LocalStack) -> None:
    dev_stack = broker
    assert dev_stack.broker is not None
    env = kafka_env(dev_stack.kafka)
    producer = AIOKafkaProducer(**client_options(dev_stack.kafka), acks="all")
    await producer.start()
    try:
        for key, reason in ((b"a", b"invalid-record"), (b"b", b"internal")):
            await producer.send_and_wait(topics.spec("dlq").name, value=b"{}", key=key,
                                         headers=[(topics.HEADER_ERROR_REASON, reason)])
    finally:
        await producer.stop()

    dry = await asyncio.to_thread(invoke, "dlq", "replay", "--topic", "sms.outbound.dlq", "--filter",
                                  "reason=invalid-record", "--dry-run", env=env)
    assert dry.exit_code == 0, dry.output
    assert "scanned 2, matched 1, would replay 1 (dry run: nothing produced)" in dry.output
    real = await asyncio.to_thread(invoke, "dlq", "replay", "--topic", "dlq", "--filter", "reason=internal", env=env)
    assert real.exit_code == 0, real.output
    assert "scanned 2, matched 1, replayed 1" in real.output and "by reason: internal 1" in real.output

    bad = await asyncio.to_thread(invoke, "dlq", "replay", "--topic", "dlq", "--filter", "colour=red", env=env)
    assert bad.exit_code == 2 and "unknown filter field 'colour'" in bad.output
    bad = await asyncio.to_thread(invoke, "dlq", "replay", "--topic", "sms.outbound", env=env)
    assert bad.exit_code == 2 and "replay reads sms.outbound.dlq or sms.outbound.failed" in bad.output
    bad = await asyncio.to_thread(invoke, "dlq", "replay", "--topic", "dlq",
                                  env={**env, "SMS_CONNECTOR_KAFKA__LINGER_MS": "-1"})
    assert bad.exit_code == 1 and "kafka.linger_ms" in bad.output and "Traceback" not in bad.output


async def test_missing_topics_and_a_stalled_broker_fail_with_what_to_do(broker: LocalStack) -> None:
    bare = broker.broker
    assert bare is not None
    await delete_topics(broker.kafka)       # as before `topics apply`
    env = {**SMPP, **kafka_env(broker.kafka), "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": f"http://127.0.0.1:{free_port()}"}
    result = await asyncio.to_thread(invoke, "check", "--connect", "--timeout", "2", "--no-settings", env=env)
    assert result.exit_code == 1
    missing = [r for r in rows(result.output) if r[:2] == ["FAIL", "topics"]]
    assert {r[2] for r in missing} == {s.name for s in topics.specs().values()}
    assert "run `sms-connector topics apply`" in result.output
    bare.pause()
    try:
        result = await asyncio.to_thread(invoke, "check", "--connect", "--timeout", "1", "--no-settings", env=env)
    finally:
        bare.resume()
    assert result.exit_code == 1
    assert f"broker unreachable at {bare.bootstrap_servers}: no answer within 1s" in result.output
