"""The CLI as a user runs it: help everywhere, and `dev --demo N --until-done`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from connector.devtools.demo import generate

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "connector.cli"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("command", [[], ["worker"], ["dev"], ["topics"], ["topics", "apply"], ["topics", "check"], ["topics", "tail"],
                                     ["send"], ["simulate"], ["bench"], ["check"], ["dlq"], ["dlq", "replay"],
                                     ["status"], ["thingspace"],
                                     ["thingspace", "register-callbacks"], ["thingspace", "start-callbacks"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 3


def test_worker_help_documents_every_setting() -> None:
    out = run("worker", "--help").stdout
    for env in ("SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT",
                "SMS_CONNECTOR_ROUTES__<NAME>__PROVIDER", "SMS_CONNECTOR_ROUTES__<NAME>__API_KEY"):
        assert env in out


def test_worker_refuses_bad_config_with_a_clear_message() -> None:
    result = run("worker", env={"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": "-5",
                                "SMS_CONNECTOR_ROUTES__X__PROVIDER": "nope"})
    assert result.returncode != 0
    assert "dispatch.max_in_flight" in result.stderr and "routes.x.provider" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("shared_dev_starting")   # the suite's shared dev starts meanwhile (tests/integration/devrun.py)
def test_dev_demo_until_done(tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, "dev", "--demo", "300", "--until-done", "--http-port", "0", "--timeout", "120"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    manifest = tmp_path / ".sms-connector-dev.json"
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists():
            try:
                seen = orjson.loads(manifest.read_bytes())
                break
            except orjson.JSONDecodeError:
                pass
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert seen is not None, "the manifest did not exist while dev ran"
    assert set(seen) >= {"bootstrap_servers", "topics", "metrics_url", "health_url", "simulators"}
    assert seen["topics"]["outbound"] == "sms.outbound"
    assert all({"base_url", "credentials"} <= set(s) for s in seen["simulators"].values())
    waiting = sum(1 for r in generate(300) if r.kind == "held")   # quiet hours: held past the demo
    assert f"{300 - waiting}/{300 - waiting} messages reached a terminal record" in out and "missing 0, duplicates 0" in out
    assert f"still waiting for the end of quiet hours {waiting} " in out
    assert not manifest.exists(), "dev should remove its manifest when it stops"
