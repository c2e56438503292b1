"""Fixtures for the image tests: each built image, unpacked once per session.

Two builds, each an OCI layout in ``build/image/`` (or ``$IMAGE_OUT``), tagged with the project's
version (or ``$IMAGE_TAG``): ``oci`` from ``make image-offline`` (debootstrap +
umoci) and ``dockerfile-oci`` from ``make image-dockerfile`` (the Dockerfile, built with buildah).
Every test taking ``layout`` or ``bundle`` runs on both. Without an image they are skipped, unless
``IMAGE_TESTS_REQUIRED=1`` (set by ``make test`` and ``make image-test``, which build both
first): then a missing image or a missing tool fails them. (None of these variables starts with
``SMS_CONNECTOR_``: the worker reads every such variable as a setting and rejects unknown ones.)
"""

from __future__ import annotations

import os
import re
import shutil
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
