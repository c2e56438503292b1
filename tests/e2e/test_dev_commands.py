"""The operator commands against a running `sms-connector dev`, exactly as the README suggests:
run in dev's directory with no flags, they find its manifest; pointed at its broker by address,
they notice it has no idempotent producer and say so once; with no broker at all, one line.

The running dev is the suite's shared `dev --demo 300` (tests/integration/devrun.py): these tests
send a few records through it, so they run after the tests that count its demo's outcomes and
before the log scan that stops it (fixture ``dev_traffic``)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from connector.devtools.embedded_broker import free_port
from tests.integration.devrun import DevRun, SharedDev

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "connector.cli"]
NOTE_DEV = "note: using the running `sms-connector dev`"
NOTE_IDEMPOTENCE = "has no idempotent producer"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMS_CONNECTOR_")}
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture
def dev(dev_traffic: SharedDev) -> DevRun:
    """The shared dev run, its demo done: these tests send more records through it."""
    return dev_traffic


def tail_json(cwd: Path, topic: str, env: dict[str, str] | None = None) -> list[dict]:
    result = cli("topics", "tail", topic, "--from-beginning", "--no-follow", "--json", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_send_from_devs_directory_uses_its_manifest_and_the_record_can_be_read_back(dev: DevRun) -> None:
    cid = f"e2e-{uuid.uuid4()}"
    result = cli("send", "--to", "+14155550123", "--text", "hi", "--id", cid, cwd=dev.workdir)
    assert result.returncode == 0, result.stderr
    assert f"produced {cid} to sms.outbound[" in result.stdout
    assert result.stderr.count(NOTE_DEV) == 1 and NOTE_IDEMPOTENCE not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    deadline = time.monotonic() + 60
    found: list[dict] = []
    while time.monotonic() < deadline and not found:
        found = [r for r in tail_json(dev.workdir, "accepted") if r["value"]["client_message_id"] == cid]
        time.sleep(0.5)
    assert found, "the sent message never reached sms.outbound.accepted"
    (rec,) = found
    assert rec["topic"] == "sms.outbound.accepted" and rec["key"] == "+14155550123"
    headers = dict(rec["headers"])
    assert headers["sms.source.topic"] == "sms.outbound"
    (original,) = [r for r in tail_json(dev.workdir, "outbound") if r["offset"] == int(headers["sms.source.offset"])
                   and r["partition"] == int(headers["sms.source.partition"])]
    assert original["value"]["text"] == "hi"


def test_tail_shows_position_key_and_headers_for_people(dev: DevRun) -> None:
    result = cli("topics", "tail", "sms.outbound.dlq", "--from-beginning", "--max-records", "1", cwd=dev.workdir)
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith("sms.outbound.dlq[") and "@" in first and "key=" in first
    assert any(line.startswith("  sms.error.reason: ") for line in rest), result.stdout


def test_a_broker_without_idempotence_is_detected_and_said_once(dev: DevRun, tmp_path: Path) -> None:
    env = {"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": dev.manifest["bootstrap_servers"]}
    result = cli("send", "--to", "+14155550123", "--text", "hi", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(NOTE_IDEMPOTENCE) == 1, result.stderr
    assert NOTE_DEV not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [
    ["topics", "check"],
    ["topics", "apply"],
    ["status", "--once", "--interval", "0.5"],
    ["dlq", "replay", "--topic", "dlq", "--dry-run"],
    ["check", "--connect", "--no-settings"],
], ids=" ".join)
def test_every_operator_command_works_against_dev_as_is(dev: DevRun, command: list[str]) -> None:
    result = cli(*command, cwd=dev.workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr, result.stderr


def test_check_connect_checks_devs_routes(dev: DevRun) -> None:
    result = cli("check", "--connect", "--no-settings", cwd=dev.workdir)
    assert "valid: 5 route(s)" in result.stdout and "0 failed" in result.stdout, result.stdout


def test_dev_runs_at_least_once_and_says_so_once(dev: DevRun) -> None:
    """#16: Tansu has no transactions: dev's workers run at-least-once (no probe, no waiting),
    dev says so once at start, and the operator commands know it from the manifest."""
    assert dev.text().count("at-least-once") == 1, dev.text()
    assert dev.manifest["environment"]["SMS_CONNECTOR_KAFKA__EXACTLY_ONCE"] == "false"
    result = cli("check", "--connect", "--no-settings", cwd=dev.workdir)
    assert "transactions" not in result.stdout, result.stdout


@pytest.mark.parametrize("command", [
    ["send", "--to", "+14155550123", "--text", "hi"],
    ["topics", "check"],
    ["topics", "tail", "accepted", "--no-follow"],
    ["dlq", "replay", "--topic", "dlq", "--dry-run"],
], ids=" ".join)
def test_no_broker_is_one_line_with_the_fix(tmp_path: Path, command: list[str]) -> None:
    result = cli(*command, cwd=tmp_path, env={"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach Kafka") and "Fix: " in lines[0], result.stderr


def test_a_manifest_left_by_a_killed_dev_is_ignored_with_a_note(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / ".sms-connector-dev.json").write_bytes(orjson.dumps(
        {"pid": gone.pid, "bootstrap_servers": f"127.0.0.1:{free_port()}"}))
    result = cli("topics", "check", cwd=tmp_path, env={"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    assert f"note: ignoring .sms-connector-dev.json: the dev process that wrote it ({gone.pid}) is gone" in result.stderr
    assert "Traceback" not in result.stderr


README_CLI = ".venv/bin/sms-connector "


def readme_quick_start_commands() -> list[str]:
    """The commands the README's quick start suggests running next to `dev`, as shell text (a
    line ending in a backslash goes on on the next)."""
    text = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    current: str | None = None
    for line in text.splitlines():
        if current is not None:
            current += "\n" + line
        elif line.startswith(README_CLI):
            current = line
        else:
            continue
        if not line.rstrip().endswith("\\"):
            commands.append(current)
            current = None
    return commands


def test_the_readme_quick_start_commands_work_against_dev(dev: DevRun) -> None:
    """Each command run by a shell as written (its quoting, `$(date ...)`, continuation lines),
    with `.venv/bin/sms-connector` standing for this checkout's CLI."""
    commands = readme_quick_start_commands()
    words = [shlex.split(c, comments=True)[1:] for c in commands]
    assert len(commands) >= 5 and {w[0] for w in words} >= {"send", "topics", "status", "check", "dlq"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMS_CONNECTOR_")}
    for command, w in zip(commands, words):
        # the README's interactive ones stop by themselves here
        extra = {"tail": ["--no-follow"], "status": ["--once"]}.get(w[1] if w[0] == "topics" else w[0], [])
        script = (f'sms_connector() {{ "$TEST_PYTHON" -m connector.cli "$@" {" ".join(extra)}; }}\n'
                  + command.replace(README_CLI, "sms_connector ", 1))
        result = subprocess.run(["bash", "-c", script], cwd=dev.workdir, capture_output=True, text=True, timeout=120,
                                env={**clean, "PYTHONPATH": str(ROOT), "TEST_PYTHON": sys.executable})
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
