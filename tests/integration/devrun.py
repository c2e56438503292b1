"""`sms-connector dev --demo N` as a subprocess, the way a user runs it, and the one such run the
tests share.

A dev start-up costs 15-25 s (an embedded broker, four simulators and a worker, one after the
other), so the tests that need a running dev share one ``dev --demo 300`` (``DEMO``) instead of
starting their own. They need it in different states, so they take it through one of four
fixtures, and ``order_shared_dev`` (called from tests/conftest.py's
``pytest_collection_modifyitems``) runs them together, in this order, at the place of the first:

0. ``shared_dev_starting``: starts the run (when a later test uses it) and does not wait for it,
   so a test can do something else meanwhile (tests/e2e/test_cli.py runs a dev of its own, which
   exits by itself: two start-ups at once cost little more than one);
1. ``dev_demo``: the demo finished and nothing else sent yet, for tests that count the demo's
   outcomes exactly (tests/integration/test_prometheus.py);
2. ``dev_traffic``: for tests that send more records through it (tests/e2e/test_dev_commands.py);
3. ``dev_last``: for the test that stops it and scans what it logged
   (tests/integration/test_logs.py).

A test that asks for it out of that order fails instead of counting the wrong records. The run
is stopped (if still running) and its logs are removed at the end of the session. Tests that kill
dev (tests/e2e/test_dev_orphans.py) or need it to exit by itself (``--until-done``) keep their own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "connector.cli"]
DEMO = 300            # the shared run's demo: `dev --demo 300` produces generate(DEMO), seed 7

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:   # noqa: S310 - loopback only
        return r.read()


def parse_metrics(body: str) -> Series:
    """Every sample as (name, labels) -> value. Empty-valued labels are dropped, as Prometheus does."""
    out: Series = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset((k, v) for k, v in s.labels.items() if v != ""))] = s.value
    return out


class DevRun:
    def __init__(self, workdir: Path, demo: int) -> None:
        self.workdir = workdir
        self.output = workdir / "dev-output.txt"
        self.manifest_path = workdir / ".sms-connector-dev.json"
        self.manifest: dict[str, Any] = {}
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [*CLI, "dev", "--demo", str(demo), "--http-port", "0", "--timeout", "120"],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"sms-connector dev exited with {self.proc.returncode}:\n{self.text()}", pytrace=False)

    def wait_manifest(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.manifest_path.exists():
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.manifest = orjson.loads(self.manifest_path.read_bytes())
                    return self.manifest
            time.sleep(0.1)
        pytest.fail(f"no manifest within {timeout:.0f}s:\n{self.text()}", pytrace=False)

    def wait_demo_done(self, timeout: float = 90.0) -> str:
        """Until dev printed its summary (every demo message has its terminal record)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            text = self.text()
            if "running; Ctrl-C to stop" in text.partition("summary")[2]:
                assert "missing 0, duplicates 0" in text, text
                return text
            time.sleep(0.2)
        pytest.fail(f"the demo did not finish within {timeout:.0f}s:\n{self.text()}", pytrace=False)

    def metrics(self) -> str:
        return http("GET", self.manifest["metrics_url"]).decode()

    def wait_consumed(self, consumed: int, timeout: float = 60.0, settled: bool = False) -> str:
        """/metrics once the worker consumed ``consumed`` records and has none in flight; ``settled``:
        and the outbound counters stood still since the reading before."""
        deadline = time.monotonic() + timeout
        previous: Series | None = None
        body = ""
        while time.monotonic() < deadline:
            self.check_alive()
            body = self.metrics()
            series = parse_metrics(body)
            outbound = {k: v for k, v in series.items()
                        if k[0].startswith("sms_outbound_") and not k[0].endswith("_created")}
            if (series.get(("sms_outbound_consumed_total", frozenset())) == consumed
                    and series.get(("sms_outbound_in_flight", frozenset())) == 0
                    and (not settled or outbound == previous)):
                return body
            previous = outbound
            time.sleep(0.3)
        pytest.fail(f"the worker did not finish {consumed} records{' (counters settled)' if settled else ''} "
                    f"within {timeout:.0f}s:\n{body}", pytrace=False)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def remove_logs(self) -> None:
        logs = self.manifest.get("logs")
        if logs and Path(logs).name.startswith("sms-connector-") and Path(logs).parent == Path(tempfile.gettempdir()):
            shutil.rmtree(logs, ignore_errors=True)


# -- the shared run ------------------------------------------------------------------------------
class SharedDev(DevRun):
    """The shared ``dev --demo DEMO``, and how far its users have taken it."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, DEMO)
        self.traffic_by: str | None = None      # the first test that sent records beyond the demo

    def check_usable(self, who: str) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{who}: the shared dev run has already stopped (exit {self.proc.returncode}); tests "
                        "using it must run before the one that stops it (see tests/integration/devrun.py)",
                        pytrace=False)


@pytest.fixture(scope="session")
def shared_dev_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDev]:
    """The shared run, started (not yet waited for); stopped and its logs removed at the end."""
    run = SharedDev(tmp_path_factory.mktemp("shared-dev"))
    try:
        yield run
    finally:
        run.stop()
        run.remove_logs()


@pytest.fixture(scope="session")
def shared_dev(shared_dev_started: SharedDev) -> SharedDev:
    """The shared run once its manifest is written and its demo is done."""
    shared_dev_started.wait_manifest()
    shared_dev_started.wait_demo_done()
    return shared_dev_started


@pytest.fixture
def dev_demo(shared_dev: SharedDev, request: pytest.FixtureRequest) -> SharedDev:
    """The shared run with the demo's records only: for tests that count its outcomes exactly."""
    shared_dev.check_usable(request.node.nodeid)
    if shared_dev.traffic_by is not None:
        pytest.fail(f"{request.node.nodeid} counts the demo's outcomes but {shared_dev.traffic_by} already sent "
                    "more records through the shared dev run (see tests/integration/devrun.py)", pytrace=False)
    return shared_dev


@pytest.fixture
def dev_traffic(shared_dev: SharedDev, request: pytest.FixtureRequest) -> SharedDev:
    """The shared run, for tests that send more records through it."""
    shared_dev.check_usable(request.node.nodeid)
    shared_dev.traffic_by = shared_dev.traffic_by or request.node.nodeid
    return shared_dev


@pytest.fixture(scope="session")
def dev_last(shared_dev: SharedDev) -> SharedDev:
    """The shared run, for the test that stops it: runs after every other test using it."""
    shared_dev.check_usable("the test that stops the shared dev run")
    return shared_dev


@pytest.fixture
def shared_dev_starting(request: pytest.FixtureRequest) -> None:
    """The shared run started in the background, if a test after this one will use it."""
    if any((phase(item) or 0) > 0 for item in request.session.items):
        request.getfixturevalue("shared_dev_started")


PHASES = ("shared_dev_starting", "dev_demo", "dev_traffic", "dev_last")


def phase(item: pytest.Item) -> int | None:
    """Which of ``PHASES`` a test uses the shared run in (None: it does not)."""
    names = getattr(item, "fixturenames", ())
    return max((i for i, name in enumerate(PHASES) if name in names), default=None)


def order_shared_dev(items: list[pytest.Item]) -> None:
    """Run the tests using the shared dev run one after the other (so it lives no longer than
    they need), at the place of the first of them, in the order of ``PHASES``; every other test
    keeps its place."""
    users = [(phase(item), n, item) for n, item in enumerate(items) if phase(item) is not None]
    if not users:
        return
    first = users[0][1]             # every item before it is another test's
    others = [item for item in items if phase(item) is None]
    items[:] = others[:first] + [item for _, _, item in sorted(users, key=lambda u: (u[0], u[1]))] + others[first:]
