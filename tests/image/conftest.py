"""Fixtures for the image tests: each built image, unpacked once per session.

Two builds, each an OCI layout in ``build/image/`` (or ``$IMAGE_OUT``), tagged with the project's
version (or ``$IMAGE_TAG``): ``oci`` from ``make image-offline`` (debootstrap +
umoci) and ``dockerfile-oci`` from ``make image-dockerfile`` (the Dockerfile, built with buildah).
Every test taking ``layout`` or ``bundle`` runs on both. Without an image they are skipped, unless
``IMAGE_TESTS_REQUIRED=1`` (set by ``make test`` and ``make image-test``): then a missing image
or a missing tool fails them. ``make image-test`` builds both first; ``make test`` sets
``IMAGE_BUILD_IN_BACKGROUND=1`` instead: both builds (``make image-offline image-dockerfile``,
niced, log in ``build/image/build.log``) start as soon as the tests are collected and run while
the unit, contract and chart tests do (which need no image and are not timed), and the image
tests wait for them, failing with the log's tail if a build fails. (None of these variables
starts with ``SMS_CONNECTOR_``: the worker reads every such variable as a setting and rejects
unknown ones.)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from connector.devtools.stack import LocalStack
from tests.image.runtime import Bundle

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TAG = os.environ.get("IMAGE_TAG") or PROJECT["version"]
IMAGE_DIR = Path(os.environ.get("IMAGE_OUT") or ROOT / "build" / "image")
BUILDS = {"offline": IMAGE_DIR / "oci", "dockerfile": IMAGE_DIR / "dockerfile-oci"}
REQUIRED = os.environ.get("IMAGE_TESTS_REQUIRED") == "1"
IN_BACKGROUND = os.environ.get("IMAGE_BUILD_IN_BACKGROUND") == "1"
BUILD_LOG = IMAGE_DIR / "build.log"
BUILD_TIMEOUT_S = 1800.0     # debootstrap of a fresh base included (about 4 minutes here)


class BackgroundBuild:
    """Both image builds as one niced ``make`` in its own process group."""

    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls) -> None:
        IMAGE_DIR.mkdir(parents=True, exist_ok=True)
        with open(BUILD_LOG, "wb") as log:
            cls.proc = subprocess.Popen(
                ["nice", "-n", "10", "make", "--no-print-directory", "image-offline", "image-dockerfile",
                 f"IMAGE_TAG={TAG}"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    @classmethod
    def wait(cls) -> None:
        """Block until the builds are over; fail (with the log's tail) if they failed."""
        if cls.proc is None:
            return
        try:
            code = cls.proc.wait(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            cls.stop()
            code = None
        if code != 0:
            tail = "\n".join(BUILD_LOG.read_text(errors="replace").splitlines()[-30:])
            pytest.fail(f"the image builds ({'timed out' if code is None else f'exit {code}'}; log {BUILD_LOG}):\n{tail}",
                        pytrace=False)

    @classmethod
    def stop(cls) -> None:
        if cls.proc is not None and cls.proc.poll() is None:
            os.killpg(cls.proc.pid, signal.SIGTERM)
            cls.proc.wait()


def pytest_collection_finish(session: pytest.Session) -> None:
    here = Path(__file__).parent
    if IN_BACKGROUND and any(Path(item.path).is_relative_to(here) for item in session.items):
        BackgroundBuild.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    BackgroundBuild.stop()     # stopped early (-x, ^C): no build left running


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    """container/requirements.txt as name -> version."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", (ROOT / "container" / "requirements.txt").read_text(), re.M)
    return {canonical(name): version for name, version in pins}


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


def built(build: str) -> Path:
    BackgroundBuild.wait()
    path = BUILDS[build]
    if not (path / "index.json").exists():
        unavailable(f"no image at {path}: build it with `make image-{build}` (as root)")
    return path


@pytest.fixture(scope="session", params=sorted(BUILDS))
def layout(request: pytest.FixtureRequest) -> Path:
    return built(request.param)


@pytest.fixture(scope="session")
def layouts() -> dict[str, Path]:
    """Both builds, to compare them."""
    return {build: built(build) for build in BUILDS}


@pytest.fixture(scope="session")
def bundle(layout: Path) -> Iterator[Bundle]:
    """The image unpacked (``umoci unpack``): needs root, as running it does."""
    if os.geteuid() != 0:
        unavailable("running the image needs root (mount namespaces, chroot, setuid)")
    if not shutil.which("umoci"):
        unavailable("umoci is not installed (make image-offline installs it)")
    with tempfile.TemporaryDirectory(prefix="sms-connector-image-") as tmp:
        yield Bundle.unpack(layout, TAG, Path(tmp) / "bundle")


@pytest.fixture
async def stack(broker: LocalStack) -> LocalStack:
    """The test broker (tests/conftest.py, with the contract's topics) and the SMPP REST simulator."""
    await broker.start_simulator("smpp_rest")
    return broker
