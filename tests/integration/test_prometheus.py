"""A real Prometheus scrapes the connector: `sms-connector dev --demo`, then Debian's `prometheus`.

The tests take the suite's shared ``sms-connector dev --demo 300`` (tests/integration/devrun.py,
started as a user does) once the demo's terminal records are in and before any other test sends
more records through it (fixture ``dev_demo``), then

- runs ``promtool check metrics`` on the worker's ``/metrics`` output (Prometheus naming and help
  conventions), and
- starts ``prometheus`` on loopback with a scrape config for the manifest's ``metrics_url``, and
  checks through Prometheus' HTTP API that the connector's series arrive with the labels and values
  the worker exports (and that they agree with the terminal records dev counted).

``prometheus`` and ``promtool`` come from Debian's ``prometheus`` package, installed by
``scripts/install-prometheus.sh`` (``make test`` runs it). Missing tools fail the test: CI must run it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from prometheus_client.parser import text_string_to_metric_families

from connector.devtools.demo import generate
from connector.devtools.embedded_broker import free_port
from tests.integration import devrun

pytestmark = pytest.mark.integration

DEMO = devrun.DEMO
JOB = "sms-connector"
INSTALL_HINT = "run scripts/install-prometheus.sh (as root; `make test` does) to install Debian's prometheus package"

Series = devrun.Series
parse_metrics = devrun.parse_metrics


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {INSTALL_HINT}. This test must run in CI, so it fails "
                    f"instead of skipping.", pytrace=False)
    return path


def http_get(url: str, timeout: float = 5.0) -> bytes:
    return devrun.http("GET", url, timeout=timeout)


def select(series: Series, name: str, **labels: str) -> Series:
    want = set(labels.items())
    return {k: v for k, v in series.items() if k[0] == name and want <= set(k[1])}


@pytest.fixture
def dev(dev_demo: devrun.SharedDev) -> devrun.SharedDev:
    """The shared dev run, its demo done and nothing else sent through it yet."""
    return dev_demo


def summary_counts(output: str) -> dict[tuple[str, str, str], int]:
    """dev's summary lines -> {(outcome, provider, reason): count}, from the terminal records."""
    found: dict[tuple[str, str, str], int] = {}
    for m in re.finditer(r"^  (accepted|failed|dead-lettered)\s+(\d+)\s*(.*)$", output.partition("summary")[2], re.M):
        details = dict(kv.split("=", 1) for kv in m.group(3).split(", ") if "=" in kv)
        found[(m.group(1), details.get("provider", ""), details.get("reason", ""))] = int(m.group(2))
    return found


# -- (a) promtool check metrics ------------------------------------------------------------------
def test_promtool_check_metrics_passes(dev: devrun.DevRun) -> None:
    promtool = require_tool("promtool")
    body = dev.wait_consumed(DEMO, timeout=30, settled=True)
    # Every family of the connector must be in the output (with HELP and TYPE) for the check to mean much.
    families = {f.name for f in text_string_to_metric_families(body)}
    assert {"sms_outbound_consumed", "sms_outbound_accepted", "sms_outbound_failed", "sms_outbound_dead_lettered",
            "sms_provider_request_duration_seconds"} <= families, sorted(families)
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not problems, f"promtool check metrics (exit {result.returncode}):\n{problems}"


# -- (b) a real Prometheus scrapes the worker ----------------------------------------------------
class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.binary = require_tool("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = workdir / "prometheus.log"
        (workdir / "tsdb").mkdir()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                 "--storage.tsdb.retention.time=1h"],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def fail(self, why: str) -> None:
        pytest.fail(f"{why}\n--- prometheus log:\n{self.log.read_text(errors='replace')}", pytrace=False)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        reply = orjson.loads(http_get(url))
        if reply.get("status") != "success":
            self.fail(f"{url}: {reply}")
        return reply["data"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"prometheus exited with {self.proc.returncode}")
            with contextlib.suppress(urllib.error.URLError, OSError):
                http_get(f"{self.url}/-/ready", timeout=1)
                return
            time.sleep(0.2)
        self.fail(f"prometheus not ready within {timeout:.0f}s")

    def wait_scraped_after(self, t: float, timeout: float = 20.0) -> None:
        """Until the target is up and Prometheus holds a sample scraped after wall-clock time ``t``."""
        deadline = time.monotonic() + timeout
        targets: Any = None
        while time.monotonic() < deadline:
            targets = self.api("targets")["activeTargets"]
            if targets and targets[0]["health"] == "up":
                got = self.api("query", query=f'timestamp(sms_outbound_consumed_total{{job="{JOB}"}})')["result"]
                if got and float(got[0]["value"][1]) > t:
                    return
            time.sleep(0.3)
        self.fail(f"no successful scrape after the demo within {timeout:.0f}s; targets: {targets}")

    def query(self, promql: str, at: float) -> Series:
        data = self.api("query", query=promql, time=f"{at:.3f}")
        assert data["resultType"] == "vector", data
        out: Series = {}
        for r in data["result"]:
            labels = dict(r["metric"])
            name = labels.pop("__name__", promql)
            out[(name, frozenset(labels.items()))] = float(r["value"][1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_prometheus_scrapes_the_demo(dev: devrun.DevRun, tmp_path: Path) -> None:
    require_tool("prometheus")
    target = urllib.parse.urlsplit(dev.manifest["metrics_url"])
    assert target.hostname == "127.0.0.1" and target.path == "/metrics", dev.manifest["metrics_url"]
    instance = target.netloc
    before = parse_metrics(dev.wait_consumed(DEMO, timeout=30, settled=True))
    t_before = time.time()

    prom = Prometheus(tmp_path, instance)
    try:
        prom.wait_ready()
        prom.wait_scraped_after(t_before)
        at = time.time()
        queries = {
            "consumed": "sms_outbound_consumed_total",
            "accepted": "sms_outbound_accepted_total",
            "accepted smpp": 'sms_outbound_accepted_total{provider="smpp_rest"}',
            "failed": "sms_outbound_failed_total",
            "failed invalid": 'sms_outbound_failed_total{reason="invalid"}',
            "dead-lettered": "sms_outbound_dead_lettered_total",
            "segments": "sms_outbound_segments_total",
            "request count": "sms_provider_request_duration_seconds_count",
            "request buckets": 'sms_provider_request_duration_seconds_bucket{le="+Inf"}',
        }
        got = {what: prom.query(q, at) for what, q in queries.items()}
        up = prom.query(f'up{{job="{JOB}"}}', at)
        terminal = prom.query("sum(sms_outbound_accepted_total) + sum(sms_outbound_failed_total)"
                              " + sum(sms_outbound_dead_lettered_total)", at)
        after = parse_metrics(dev.metrics())
    finally:
        prom.stop()

    assert list(up.values()) == [1.0], up
    # Every series carries the scrape's job and instance, plus exactly the worker's own labels.
    for what, series in got.items():
        for name, labels in series:
            d = dict(labels)
            assert d.pop("job") == JOB and d.pop("instance") == instance, (what, d)
    strip = {what: {(n, frozenset((k, v) for k, v in ls if k not in ("job", "instance"))): v
                    for (n, ls), v in series.items()} for what, series in got.items()}

    def expected(name: str, **labels: str) -> tuple[Series, Series]:
        return select(before, name, **labels), select(after, name, **labels)

    checks = {
        "consumed": expected("sms_outbound_consumed_total"),
        "accepted": expected("sms_outbound_accepted_total"),
        "accepted smpp": expected("sms_outbound_accepted_total", provider="smpp_rest"),
        "failed": expected("sms_outbound_failed_total"),
        "failed invalid": expected("sms_outbound_failed_total", reason="invalid"),
        "dead-lettered": expected("sms_outbound_dead_lettered_total"),
        "segments": expected("sms_outbound_segments_total"),
        "request count": expected("sms_provider_request_duration_seconds_count"),
        "request buckets": expected("sms_provider_request_duration_seconds_bucket", le="+Inf"),
    }
    for what, (lo, hi) in checks.items():
        assert lo, f"{what}: the worker exported no such series"
        assert set(strip[what]) == set(lo) == set(hi), \
            f"{what}: Prometheus has {sorted(strip[what])}, the worker exports {sorted(hi)}"
        for key, value in strip[what].items():
            # Outbound counters stand still after the demo (lo == hi); provider request counts may
            # still grow (pollers), so Prometheus' sample lies between the two /metrics readings.
            assert lo[key] <= value <= hi[key], f"{what} {sorted(key[1])}: Prometheus {value}, worker {lo[key]}..{hi[key]}"

    # The demo's shape, as Prometheus sees it.
    assert strip["consumed"] == {("sms_outbound_consumed_total", frozenset()): float(DEMO)}
    smpp = strip["accepted smpp"]
    # the smpp route, and the dev stack's quiet-hours route (its one-time passwords bypass them)
    assert set(smpp) == {("sms_outbound_accepted_total", frozenset({("provider", "smpp_rest"), ("route", route)}))
                         for route in ("smpp", "quiet")}
    assert all(v > 0 for v in smpp.values())
    assert {dict(ls)["provider"] for _, ls in strip["accepted"]} == {"smpp_rest", "revio", "ogangi", "thingspace"}
    assert all({k for k, _ in ls} == {"route", "provider", "reason"} for _, ls in strip["failed invalid"]), \
        strip["failed invalid"]
    assert sum(strip["failed invalid"].values()) > 0
    assert all({k for k, _ in ls} == {"reason"} for _, ls in strip["dead-lettered"]), strip["dead-lettered"]
    assert sum(strip["dead-lettered"].values()) > 0
    assert all({k for k, _ in ls} == {"provider", "outcome"} for _, ls in strip["request count"])
    # the demo's records held for quiet hours (until morning in their zone) have no outcome yet
    held = sum(1 for r in generate(DEMO) if r.kind == "held")
    assert list(terminal.values()) == [float(DEMO - held)], \
        f"accepted + failed + dead-lettered != consumed - held for quiet hours: {terminal}"

    # And the metrics agree with the terminal records dev read back from Kafka.
    summary = summary_counts(dev.text())
    assert summary, dev.text()
    from_prometheus: dict[tuple[str, str, str], int] = {}
    for what, outcome in (("accepted", "accepted"), ("failed", "failed"), ("dead-lettered", "dead-lettered")):
        for (_, ls), v in strip[what].items():
            d = dict(ls)
            key = (outcome, d.get("provider", ""), "" if outcome == "accepted" else d.get("reason", ""))
            from_prometheus[key] = from_prometheus.get(key, 0) + int(v)
    assert from_prometheus == summary
