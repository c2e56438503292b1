"""No orphans: however `sms-connector dev` ends (Ctrl-C, SIGTERM, a closed terminal's SIGHUP, or
SIGKILL), its broker, simulators and worker end with it and nothing is left listening."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.devrun import DevRun
from tests.integration.helpers import FULL

pytestmark = pytest.mark.e2e


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ports(manifest: dict) -> set[int]:
    urls = [manifest["metrics_url"], *(s["base_url"] for s in manifest["simulators"].values())]
    return {int(manifest["bootstrap_servers"].rsplit(":", 1)[1])} | {urlsplit(u).port for u in urls}


# SIGINT, SIGTERM and SIGHUP reach one handler (connector.devtools.dev: on_signal) and one stop
# sequence: `make test` runs SIGTERM for the three and SIGKILL (no handler: the kernel's PR_SET_PDEATHSIG
# ends the children, connector.devtools.children); `make faults` (FAULTS=full) runs all four.
SIGNALS = [signal.SIGTERM, signal.SIGKILL] + ([signal.SIGINT, signal.SIGHUP] if FULL else [])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_dev_leaves_nothing_behind(tmp_path: Path, sig: signal.Signals) -> None:
    run = DevRun(tmp_path, demo=0)
    try:
        manifest = run.wait_manifest()
        kids = children(run.proc.pid)
        open_ports = ports(manifest)
        assert len(kids) == 6, f"broker, 4 simulators and a worker expected, found {kids}"
        assert all(listening(p) for p in open_ports), open_ports

        run.proc.send_signal(sig)
        run.proc.wait(timeout=90)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (any(alive(k) for k in kids) or any(listening(p) for p in open_ports)):
            time.sleep(0.2)
        assert [k for k in kids if alive(k)] == [], run.text()
        assert [p for p in open_ports if listening(p)] == []
        if sig is signal.SIGKILL:
            assert run.proc.returncode == -signal.SIGKILL
            assert run.manifest_path.exists()          # nobody could remove it: the next command ignores it
        else:
            assert run.proc.returncode == 0, run.text()
            assert "stopped" in run.text() and not run.manifest_path.exists()
    finally:
        run.stop()
        run.remove_logs()
