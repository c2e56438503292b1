"""The image `make image-offline` builds, checked and run as the chart's pod runs it.

Run with the root filesystem read-only, only ``/tmp`` writable, as uid/gid 10001 and as PID 1
(tests/image/runtime.py), against the test broker and the SMPP REST simulator on loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import yaml

from connector.records import OutboundSms, Recipient, encode_outbound
from connector.devtools.stack import Follower, LocalStack, free_port, produce, worker_env
from tests.image.conftest import PROJECT, ROOT, TAG, canonical, locked
from tests.image.runtime import Bundle, Container, image_config

VENV = "opt/sms-connector"
CHART_VALUES = yaml.safe_load((ROOT / "helm" / "sms-connector" / "values.yaml").read_text())


def installed(rootfs: Path) -> dict[str, str]:
    """Distributions in the image's virtualenv, from their METADATA files, as name -> version."""
    found = {}
    for meta in (rootfs / VENV).glob("lib/python3.*/site-packages/*.dist-info/METADATA"):
        headers = dict(re.findall(r"^(Name|Version): (.+)$", meta.read_text(errors="replace"), re.M))
        found[canonical(headers["Name"])] = headers["Version"]
    return found


def test_image_configuration_is_what_the_chart_runs(layout: Path) -> None:
    config = image_config(layout, TAG)
    c = config["config"]
    sc = CHART_VALUES["securityContext"]
    assert c["User"] == f"{sc['runAsUser']}:{sc['runAsGroup']}" == "10001:10001"   # numeric: runAsNonRoot can check it
    assert c["Entrypoint"] == ["sms-connector"] and c["Cmd"] == ["worker"]
    assert f"{CHART_VALUES['httpPort']}/tcp" in c["ExposedPorts"]
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["PATH"].startswith("/opt/sms-connector/bin:") and env["PYTHONDONTWRITEBYTECODE"] == "1"
    labels = c["Labels"]
    assert labels["org.opencontainers.image.version"] == PROJECT["version"]
    assert labels["org.opencontainers.image.licenses"] == PROJECT["license"]
    assert labels["org.opencontainers.image.source"] and labels["org.opencontainers.image.revision"]
    assert config["os"] == "linux" and config["architecture"] == "amd64"


def test_the_dockerfile_and_the_offline_build_make_the_same_image(layouts: dict[str, Path]) -> None:
    """Same configuration where it matters to the pod. (Same wheels: the next test holds each image
    to container/requirements.txt. The bases differ: python:3.11-slim, or here its stand-in.)"""
    def essentials(layout: Path) -> dict:
        c = image_config(layout, TAG)["config"]
        env = dict(e.split("=", 1) for e in c["Env"])
        labels = {k: v for k, v in c["Labels"].items() if k.startswith("org.opencontainers.image.")
                  and k not in ("org.opencontainers.image.base.name", "org.opencontainers.image.revision")}
        return {"user": c["User"], "entrypoint": c["Entrypoint"], "cmd": c["Cmd"], "ports": c["ExposedPorts"],
                "workdir": c.get("WorkingDir", "/") or "/", "labels": labels, "stop": c.get("StopSignal"),
                "env": {k: env.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "LANG")},
                "path": env["PATH"].split(":")[0]}
    offline, dockerfile = essentials(layouts["offline"]), essentials(layouts["dockerfile"])
    assert offline == dockerfile
    assert offline["labels"].keys() >= {f"org.opencontainers.image.{k}" for k in ("version", "source", "licenses")}


def test_image_holds_exactly_the_locked_wheels_and_no_tests_caches_compilers_or_secrets(bundle: Bundle) -> None:
    rootfs = bundle.rootfs
    dists = installed(rootfs)
    assert dists.pop("sms-connector") == PROJECT["version"]
    assert dists == locked(), "the image's packages are not container/requirements.txt"   # no pip, no dev extra
    site = next((rootfs / VENV).glob("lib/python3.*/site-packages"))
    assert not (site / "tests").exists() and not list(site.glob("*/tests/test_*.py")), "test code in the image"
    assert not list(site.glob("_pytest*")) and not list(site.glob("hypothesis*"))
    for compiler in ("gcc", "cc", "c++", "x86_64-linux-gnu-gcc-12", "clang", "make"):
        assert not (rootfs / "usr" / "bin" / compiler).exists(), f"{compiler} in the image"
    assert not (rootfs / "root" / ".cache").exists()
    assert not list((rootfs / "var" / "cache" / "apt").glob("**/*.deb"))
    assert not list((rootfs / "var" / "lib" / "apt" / "lists").glob("*_Packages"))
    assert not list(rootfs.glob("tmp/*")) and not list(rootfs.glob(f"{VENV}/**/*.whl"))
    # Nothing of the build machine: no resolver configuration, its hostname, or a private key.
    resolv = rootfs / "etc" / "resolv.conf"   # a build engine may leave an empty mount point
    assert not resolv.exists() or resolv.stat().st_size == 0
    assert (rootfs / "etc" / "hostname").read_text().strip() == "localhost"
    for top in ("etc", "opt", "root"):
        for path in (rootfs / top).rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1_000_000:
                assert b"PRIVATE KEY-----" not in path.read_bytes(), f"a private key in the image: {path}"


def test_version_runs_as_10001_with_a_read_only_root_and_only_tmp_writable(bundle: Bundle) -> None:
    result = bundle.run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sms-connector, version {PROJECT['version']}"

    probe = r"""
import json, os
def writable(d):
    try:
        with open(os.path.join(d, ".probe"), "w"):
            pass
        return True
    except OSError:
        return False
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
                  "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                  "writable": [d for d in ("/", "/etc", "/opt/sms-connector", "/usr", "/var", "/tmp") if writable(d)]}))
"""
    result = bundle.run("-c", probe, entrypoint=("python3",))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["uid"], seen["gid"], seen["groups"]) == (10001, 10001, [])
    assert seen["pid"] == 1
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["writable"] == ["/tmp"]


async def test_check_connect_passes_against_the_test_broker(bundle: Bundle, stack: LocalStack) -> None:
    assert stack.broker is not None
    env = worker_env(stack.broker.bootstrap_servers, stack.sim_urls, http_port=free_port())
    result = await asyncio.to_thread(bundle.run, "check", "--connect", "--plain", "--no-settings", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^OK\s+kafka\s+broker\s+reachable", result.stdout, re.M), result.stdout
    assert re.search(r"^OK\s+route\s+smpp\s+credentials", result.stdout, re.M), result.stdout


async def test_dispatch_worker_in_the_image_gets_ready_sends_and_stops_cleanly_on_sigterm(
        bundle: Bundle, stack: LocalStack) -> None:
    assert stack.broker is not None
    port = free_port()
    env = worker_env(stack.broker.bootstrap_servers, stack.sim_urls, http_port=port)
    container = await bundle.start("worker", "--role", "dispatch", env=env, log=stack.logdir / "image-worker.log")
    try:
        pid1 = await container.pid1()
        assert Container.ns_pid(pid1) == 1, "the worker is not PID 1 of its namespace"
        await wait_ready(f"http://127.0.0.1:{port}/readyz", container, timeout=90)

        msg = OutboundSms(client_message_id="image-1", recipient=Recipient(phone="+14155550123"), text="from the image")
        async with Follower(stack.kafka) as follower:
            await produce(stack.kafka, [(b"+14155550123", encode_outbound(msg), [])])
            assert await follower.wait_for(["image-1"], timeout=60), container.log_tail()
        assert follower.tally.outcomes[("accepted", "", "smpp_rest")] == 1, follower.tally.outcomes
        assert (await stack.sim_stats("smpp_rest"))["accepted"] == 1

        started = time.monotonic()
        code = await container.terminate(timeout=45)
        assert code == 0, f"exit {code} after SIGTERM\n{container.log_tail()}"
        assert time.monotonic() - started < 45
    finally:
        await container.kill()
    lines = container.log.read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines), "not JSON logs:\n" + container.log_tail()


async def wait_ready(url: str, container: Container, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s:
        while time.monotonic() < deadline:
            if container.proc.returncode is not None:
                raise AssertionError(f"worker exited with {container.proc.returncode}\n{container.log_tail()}")
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
                    last = f"{r.status} {await r.text()}"
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not 200 within {timeout:.0f}s (last: {last})\n{container.log_tail()}")
