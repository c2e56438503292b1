"""`sms-connector dev --demo N` as a subprocess, the way a user runs it (shared by the
Prometheus and log-scan tests)."""

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

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "connector.cli"]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:   # noqa: S310 - loopback only
        return r.read()


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


@contextlib.contextmanager
def demo_done(workdir: Path, demo: int, cls: type[DevRun] = DevRun, remove_logs: bool = False) -> Iterator[DevRun]:
    """`dev --demo N` running for the block, once its manifest is written and its demo is done."""
    run = cls(workdir, demo)
    try:
        run.wait_manifest()
        run.wait_demo_done()
        yield run
    finally:
        run.stop()
        if remove_logs:
            run.remove_logs()
