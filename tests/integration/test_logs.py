"""The logs of a full run never hold a secret, a token, a message text or a full phone number.

Takes the suite's shared ``sms-connector dev --demo 300`` (tests/integration/devrun.py, started as a
user does) after every other test using it (fixture ``dev_last``: tests/e2e/test_dev_commands.py
sends a few records of its own through it first), sends a second batch of demo traffic with
provider faults switched on (5xx, 429, rejections: the error and retry paths log the most), then a
provider outage until the MO pollers log their failures, stops dev with SIGTERM, and scans every log file in the manifest's ``logs`` directory (worker,
simulators, broker) and dev's own output for

- every configured secret (the simulator credentials the worker uses, the ThingSpace callback
  password; also as HTTP Basic ``user:password`` in base64),
- bearer / session tokens (``Authorization: Bearer ...``, ``VZ-M2M-Token``, ``SessionKey`` ...),
- every demo message text (decoded from the records ``connector.devtools.demo.generate`` produced),
- every recipient in full: E.164 numbers (also without ``+`` and in US national form) and
  device ids.

Lines are also searched percent-decoded, XML-unescaped and, for JSON lines, JSON-decoded, so a
logged URL (Ogangi puts number and text in the path) or SOAP body counts too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import orjson
import pytest

from connector.config import KafkaSettings, load
from connector.devtools.demo import DEMO_HEADER, DemoRecord, generate
from connector.devtools.simulators import SIMULATORS
from connector.devtools.stack import produce, worker_env
from connector.ops.tools import tail, topic_name
from tests.integration import devrun

pytestmark = pytest.mark.integration

DEMO = devrun.DEMO    # what the shared `dev --demo` produced (generate(DEMO), seed 7)
FAULTY = 200          # then produced by the test with provider faults on
FAULTY_SEED = 11
FAULTS = {"error_rate": 0.15, "throttle_rate": 0.1, "retry_after_s": 0, "reject_rate": 0.1, "seed": 3}
OUTAGE = {"error_rate": 1.0, "throttle_rate": 0, "reject_rate": 0}
OUTAGE_S = 12.0       # at most; more than one MO poll interval (5 s)
MIN_TEXT = 8          # shorter texts ("REBOOT", "PING 12") are too generic to search for
SECRET_KEYS = re.compile(r"pass|secret|private|api_key|token", re.I)
TOKEN_PATTERNS = [
    re.compile(r"\bbearer\s+[A-Za-z0-9._~+/=-]{8,}", re.I),
    re.compile(r"\bbasic\s+[A-Za-z0-9+/=]{8,}", re.I),
    re.compile(r"vz-m2m-token[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9-]{8,}", re.I),
    re.compile(r"[\"']?(access_token|sessionToken|session_token|session_key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9-]{8,}", re.I),
    re.compile(r"<(\w+:)?SessionKey>[^<]{8,}<", re.I),
]


http = devrun.http


def sim_root(name: str, base_url: str) -> str:
    return base_url.removesuffix(SIMULATORS[name].base_path)


@dataclass
class FullRun:
    manifest: dict[str, Any]
    logs: list[Path]           # every log file of the run, dev's output included
    records: list[DemoRecord]  # every demo record produced
    exit_code: int


async def outbound_by_demo(kafka: KafkaSettings) -> dict[str, int]:
    """How many records sms.outbound holds by the prefix of their demo id ("" without one)."""
    found: dict[str, int] = {}

    def count(record: Any) -> None:
        prefix = dict(record.headers or ()).get(DEMO_HEADER, b"").decode().rpartition("-")[0]
        found[prefix] = found.get(prefix, 0) + 1
    await tail(kafka, topic_name("outbound"), count, from_beginning=True, follow=False)
    return found


@pytest.fixture(scope="module")
def full_run(dev_last: devrun.SharedDev) -> FullRun:
    run = dev_last
    manifest = run.manifest
    # Second act: provider faults on, more traffic; retries, throttling and rejections log.
    for name, sim in manifest["simulators"].items():
        http("PUT", sim_root(name, sim["base_url"]) + "/_sim/faults", orjson.dumps(FAULTS))
    faulty = list(generate(FAULTY, seed=FAULTY_SEED, prefix="logscan"))
    kafka = KafkaSettings(bootstrap_servers=manifest["bootstrap_servers"], idempotent_producer=False,
                          replication_factor=1)
    asyncio.run(produce(kafka, ((r.key, r.value, [(DEMO_HEADER, r.demo_id.encode())]) for r in faulty)))
    # Until the worker consumed every record of sms.outbound: the demo's, this batch, and the few
    # the tests before this one sent.
    outbound = asyncio.run(outbound_by_demo(kafka))
    assert outbound["logscan"] == FAULTY and sum(n for p, n in outbound.items() if p.startswith("demo")) == DEMO, \
        outbound
    run.wait_consumed(sum(outbound.values()))
    # Third act: every provider call fails for a while, so the MO pollers log their failures.
    for name, sim in manifest["simulators"].items():
        http("PUT", sim_root(name, sim["base_url"]) + "/_sim/faults", orjson.dumps(OUTAGE))
    logdir = Path(manifest["logs"])
    deadline = time.monotonic() + OUTAGE_S
    while time.monotonic() < deadline and not any(
            '"level":"warning"' in p.read_text(errors="replace") for p in logdir.glob("worker*.log")):
        time.sleep(0.3)
    code = run.stop()
    files = sorted(p for p in logdir.rglob("*") if p.is_file())
    assert any(p.name.startswith("worker") for p in files), files
    assert sum(p.name.startswith("sim-") for p in files) == len(manifest["simulators"]), files
    return FullRun(manifest, [*files, run.output], [*generate(DEMO), *faulty], code)


# -- what must never appear --------------------------------------------------------------------
def configured_secrets(manifest: dict[str, Any]) -> dict[str, str]:
    """needle -> what it is. From the worker's configuration (as dev builds it) and the manifest."""
    found: dict[str, str] = {}
    sims = {name: sim_root(name, s["base_url"]) for name, s in manifest["simulators"].items()}
    cb = manifest["callback_urls"]["thingspace"]
    port = urllib.parse.urlsplit(manifest["metrics_url"]).port or 0
    settings = load(environ=worker_env(manifest["bootstrap_servers"], sims, port) | {
        "SMS_CONNECTOR_CALLBACKS__PUBLIC_URL": f"http://127.0.0.1:{port}",
        "SMS_CONNECTOR_CALLBACKS__THINGSPACE_USERNAME": cb["username"],
        "SMS_CONNECTOR_CALLBACKS__THINGSPACE_PASSWORD": cb["password"]})
    for value in settings.secrets():
        found[value] = "configured secret"
    pairs = [(cb["username"], cb["password"], "callback credentials")]
    for name, sim in manifest["simulators"].items():
        creds = sim["credentials"]
        for key, value in creds.items():
            if SECRET_KEYS.search(key) and isinstance(value, str):
                found.setdefault(value, f"{name} {key}")
        for user, secret in (("username", "password"), ("client_id", "client_secret")):
            if user in creds and secret in creds:
                pairs.append((creds[user], creds[secret], f"{name} {user}:{secret}"))
    for user, secret, what in pairs:
        found[base64.b64encode(f"{user}:{secret}".encode()).decode()] = f"{what} as HTTP Basic"
    assert cb["password"] in found, "the callback password must be among the needles"
    return {k: v for k, v in found.items() if len(k) >= 6}


def demo_content(records: Iterable[DemoRecord]) -> dict[str, str]:
    """needle -> what it is: message texts and full recipients of the demo records."""
    found: dict[str, str] = {}
    for r in records:
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(r.value)
            if not isinstance(data, dict):
                continue
            text = data.get("text")
            if isinstance(text, str) and len(text) >= MIN_TEXT:
                found[text] = f"message text of {r.demo_id}"
                if len(text) > 24:
                    found.setdefault(text[:24], f"start of the message text of {r.demo_id}")
            recipient = data.get("recipient") or {}
            phone = recipient.get("phone")
            if isinstance(phone, str) and len(phone) >= 9:        # "+12345" (invalid) is not a number
                found[phone] = f"phone number of {r.demo_id}"
                found[phone.lstrip("+")] = f"phone number of {r.demo_id} without +"
                if phone.startswith("+1") and len(phone) == 12:
                    found[phone[2:]] = f"phone number of {r.demo_id}, US national form"
            device = recipient.get("device")
            if isinstance(device, dict) and isinstance(device.get("id"), str) and len(device["id"]) >= 8:
                found[device["id"]] = f"device id ({device.get('kind')}) of {r.demo_id}"
    return found


def views(line: str) -> list[str]:
    """The line as written, percent-decoded, XML-unescaped, and its JSON string values decoded."""
    out = [line, urllib.parse.unquote_plus(line), html.unescape(line)]
    if line.lstrip().startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            strings: list[str] = []

            def walk(v: Any) -> None:
                if isinstance(v, str):
                    strings.append(v)
                elif isinstance(v, dict):
                    for k, x in v.items():
                        strings.append(str(k))
                        walk(x)
                elif isinstance(v, list):
                    for x in v:
                        walk(x)
            walk(orjson.loads(line))
            joined = "\n".join(strings)
            out += [joined, urllib.parse.unquote_plus(joined), html.unescape(joined)]
    return out


def scan(files: Iterable[Path], needles: dict[str, str]) -> list[str]:
    hits: list[str] = []
    pattern = re.compile("|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)))
    for path in files:
        for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            seen: set[str] = set()
            for view in views(line):
                seen.update(m.group(0) for m in pattern.finditer(view))
                for tp in TOKEN_PATTERNS:
                    seen.update(f"token-like {m.group(0)!r}" for m in tp.finditer(view))
            for needle in sorted(seen):
                what = needles.get(needle, "a bearer/session token")
                hits.append(f"{path.name}:{no}: {what} ({needle!r}): {line[:300]}")
    return hits


def report(hits: list[str]) -> str:
    return f"{len(hits)} hit(s):\n" + "\n".join(hits[:40]) + ("\n..." if len(hits) > 40 else "")


# -- the tests ---------------------------------------------------------------------------------
def test_the_run_logged_something_and_stopped_cleanly(full_run: FullRun) -> None:
    assert full_run.exit_code == 0
    worker = [p for p in full_run.logs if p.name.startswith("worker")]
    text = "".join(p.read_text(errors="replace") for p in worker)
    assert "dispatch started" in text and "dispatch stopped" in text, text[-2000:]


def test_no_secret_or_token_in_any_log(full_run: FullRun) -> None:
    needles = configured_secrets(full_run.manifest)
    assert len(needles) >= 6, needles
    hits = scan(full_run.logs, needles)
    assert not hits, "secrets or tokens in the logs: " + report(hits)


def test_no_message_text_or_full_recipient_in_any_log(full_run: FullRun) -> None:
    needles = demo_content(full_run.records)
    assert sum(v.startswith("message text") for v in needles.values()) > 100
    assert sum(v.startswith("phone number of") for v in needles.values()) > 100
    hits = [h for h in scan(full_run.logs, needles) if "token-like" not in h]
    assert not hits, "message texts or full recipients in the logs: " + report(hits)


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scanner itself: plain, JSON-escaped, percent-encoded and XML-escaped forms are found."""
    needles = {"Привет! Ваш код 1234": "text", "+14155550123": "phone", "s3cr&t-value": "secret"}
    log = tmp_path / "x.log"
    log.write_text("\n".join([
        orjson.dumps({"msg": "sent", "text": "Привет! Ваш код 1234"}).decode(),
        '{"msg": "x", "to": "\\u002b14155550123"}',
        "GET /rest/api/sendSMS/%2B14155550123/hi",
        "<Password>s3cr&amp;t-value</Password>",
        "Authorization: Bearer 0c8e9a52-5d1f-4a4e-8f49-3f1f0b0e2b1a",
        "nothing here",
    ]) + "\n", encoding="utf-8")
    hits = scan([log], needles)
    assert [h.split(":")[1] for h in hits] == ["1", "2", "3", "4", "5"], hits
