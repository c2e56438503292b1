"""Fixtures for the image tests: the image `make image-offline` built, unpacked once per session.

The image is found at ``build/image/oci`` (or ``$SMS_CONNECTOR_IMAGE_LAYOUT``), tagged with the
project's version. Without an image these tests are skipped, unless
``SMS_CONNECTOR_IMAGE_REQUIRED=1`` (set by ``make test`` and ``make image-test``, which build it
first): then a missing image or a missing tool fails them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from connector.stack import LocalStack
from tests.image.runtime import Bundle

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TAG = PROJECT["version"]
LAYOUT = Path(os.environ.get("SMS_CONNECTOR_IMAGE_LAYOUT") or ROOT / "build" / "image" / "oci")
REQUIRED = os.environ.get("SMS_CONNECTOR_IMAGE_REQUIRED") == "1"


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def layout() -> Path:
    if not (LAYOUT / "index.json").exists():
        unavailable(f"no image at {LAYOUT}: build it with `make image-offline` (as root)")
    return LAYOUT


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
async def stack() -> AsyncIterator[LocalStack]:
    """The test broker (with the contract's topics) and the SMPP REST simulator, on loopback."""
    s = LocalStack()
    await s.start_broker()
    await s.start_simulator("smpp_rest")
    try:
        yield s
    finally:
        await s.stop()
