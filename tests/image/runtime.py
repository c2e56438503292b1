"""Run an OCI image the way the chart's pod runs it, without a container engine.

This machine has no container engine that works (no daemon for ``docker``; ``crun`` refuses the
hybrid cgroup layout), so the tests run the image with util-linux alone, as root:

- ``umoci unpack`` turns the image into a runtime bundle: the root filesystem and a
  runtime-spec ``config.json`` made from the image configuration (user, entrypoint + cmd, env,
  working directory), exactly what an engine starts from;
- the process gets new mount, PID, IPC and UTS namespaces (``unshare --fork``): the worker is
  PID 1 of its namespace, as in a pod, so SIGTERM reaches it with no default action behind it;
- the root filesystem is a read-only bind mount, with a fresh ``/proc``, a minimal ``/dev`` and a
  tmpfs on ``/tmp`` (the pod's emptyDir), and is entered with ``unshare --root``;
- the user and group come from the image (10001:10001, no supplementary groups), with
  ``no_new_privs`` and a capability bounding set that holds nothing the process could use (it
  keeps only what entering the root needs, and a non-root process gets none of it).

The network namespace is shared with the host (like ``--network host``): the test broker and the
simulators listen on loopback. Cgroups (resource limits) are not applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# Runs as root in the new namespaces, then becomes the image's process.
# $1 root filesystem, $2 working directory, $3 uid, $4 gid, then the command.
SETUP = r"""
set -eu
root=$1 cwd=$2 uid=$3 gid=$4; shift 4
mount --bind "$root" "$root"
mount -o remount,bind,ro,nosuid,nodev "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,noexec,mode=755,size=64k tmpfs "$root/dev"
for d in null zero full random urandom tty; do
    touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"
done
ln -s /proc/self/fd "$root/dev/fd"
for i in 0 1 2; do ln -s "/proc/self/fd/$i" "$root/dev/$(echo stdin stdout stderr | cut -d' ' -f$((i + 1)))"; done
mkdir "$root/dev/shm"; mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=16m tmpfs "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=1777,size=64m tmpfs "$root/tmp"
exec setpriv --no-new-privs --bounding-set=-all,+sys_chroot,+setuid,+setgid -- \
    unshare --root="$root" --wd="$cwd" --setuid="$uid" --setgid="$gid" -- "$@"
"""


def image_config(layout: Path, tag: str) -> dict:
    """The image configuration (OCI image-spec) of ``layout:tag``."""
    def blob(digest: str) -> dict:
        algo, _, hexa = digest.partition(":")
        return json.loads((layout / "blobs" / algo / hexa).read_bytes())

    index = json.loads((layout / "index.json").read_text())
    [manifest] = [m for m in index["manifests"]
                  if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    return blob(blob(manifest["digest"])["config"]["digest"])


@dataclass(frozen=True)
class Bundle:
    """An unpacked image: its root filesystem and the process its configuration describes."""

    rootfs: Path
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    uid: int
    gid: int

    @classmethod
    def unpack(cls, layout: Path, tag: str, dest: Path) -> Bundle:
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(dest)], check=True,
                       stdout=subprocess.DEVNULL)
        process = json.loads((dest / "config.json").read_text())["process"]
        env = dict(e.split("=", 1) for e in process["env"])
        env.pop("TERM", None)   # umoci adds it for a terminal; the pod has none
        return cls(dest / "rootfs", tuple(process["args"]), env, process["cwd"], process["user"]["uid"],
                   process["user"]["gid"])

    def command(self, args: tuple[str, ...] | None = None, entrypoint: tuple[str, ...] | None = None) -> list[str]:
        """``args`` replace the image's cmd, ``entrypoint`` its entrypoint (Kubernetes ``args`` and
        ``command``); the image's entrypoint is one word, ``sms-connector``."""
        argv = [*(entrypoint or self.args[:1]), *(self.args[1:] if args is None else args)]
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child=SIGKILL", "--ipc", "--uts",
                "--propagation", "private", "--", "/bin/sh", "-c", SETUP, "setup", str(self.rootfs), self.cwd,
                str(self.uid), str(self.gid), *argv]

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The image's environment plus what the pod adds; nothing of the host's."""
        return {**self.env, **(extra or {})}

    def run(self, *args: str, env: Mapping[str, str] | None = None, entrypoint: tuple[str, ...] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args, entrypoint), env=self.environ(env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    async def start(self, *args: str, env: Mapping[str, str] | None = None, log: Path) -> Container:
        with open(log, "ab") as fh:
            proc = await asyncio.create_subprocess_exec(*self.command(args), env=self.environ(env), stdout=fh,
                                                        stderr=fh, stdin=asyncio.subprocess.DEVNULL)
        return Container(proc, log, self.rootfs)


@dataclass
class Container:
    """A running image: ``proc`` is the outer ``unshare``, whose only child is the image's PID 1."""

    proc: asyncio.subprocess.Process
    log: Path
    rootfs: Path

    async def pid1(self, timeout: float = 10) -> int:
        """Host PID of the container's PID 1, once it runs the image's command."""
        for _ in range(int(timeout / 0.05)):
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
                if children and os.readlink(f"/proc/{children[0]}/exe").startswith(f"{self.rootfs}/"):
                    return int(children[0])   # it has exec'd a program of the image
            await asyncio.sleep(0.05)
        raise RuntimeError("the container's process did not start")

    @staticmethod
    def ns_pid(host_pid: int) -> int:
        """The PID a process has in its own (innermost) PID namespace."""
        status = Path(f"/proc/{host_pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1])

    async def terminate(self, timeout: float) -> int:
        """SIGTERM to the container's PID 1 (what the kubelet does); its exit code."""
        os.kill(await self.pid1(), signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()   # --kill-child: its PID 1, and so the namespace, dies with it
            await self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
