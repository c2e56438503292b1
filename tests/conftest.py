"""Fixtures shared by every test layer, and the choice of broker.

Integration and e2e tests run on Apache Kafka (``connector.devtools.kafka_broker``): one broker started
once per test run (a JVM start costs seconds); each test gets it with every topic of the
contract deleted and created again, and its own consumer group id, so tests never see each
other's records or offsets. ``TEST_BROKER=tansu`` (or a machine without Java 17 and
Maven, outside CI) runs them on the embedded Tansu broker instead, one per test, and skips the
tests only Apache Kafka allows (marked ``kafka``). With ``CI=true`` a missing Apache Kafka is an
error, never a silent fallback.

The tests that need a running ``sms-connector dev`` share one (tests/integration/devrun.py): its
fixtures are registered here, and ``pytest_collection_modifyitems`` runs those tests together, in
the order their fixtures ask for.
"""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator, Iterator

import pytest

from connector.kafka import delete_topics, wait_for_leaders
from connector.devtools.kafka_broker import KAFKA_VERSION, KafkaCluster, missing_tools
from connector.devtools.stack import LocalStack
from tests.integration.devrun import (dev_demo, dev_last, dev_traffic, order_shared_dev, shared_dev,  # noqa: F401
                                      shared_dev_started, shared_dev_starting)


def _choose_broker() -> tuple[str, str]:
    """("kafka" | "tansu", why) from TEST_BROKER, CI and what the machine has."""
    wanted = os.environ.get("TEST_BROKER", "").strip().lower()
    missing = missing_tools()
    if wanted == "tansu":
        return "tansu", "TEST_BROKER=tansu"
    if not missing:
        return "kafka", "Java and Maven found"
    why = f"this machine lacks {' and '.join(missing)}"
    if wanted == "kafka" or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(f"the test suite needs Apache Kafka here (CI or TEST_BROKER=kafka) "
                                f"but {why}: install them (Debian: apt-get install "
                                "openjdk-17-jre-headless maven openssl)")
    return "tansu", why


BROKER, BROKER_WHY = _choose_broker()
ON_KAFKA = BROKER == "kafka"


def pytest_report_header(config: pytest.Config) -> list[str]:
    if ON_KAFKA:
        return [f"broker: Apache Kafka {KAFKA_VERSION}, one per run ({BROKER_WHY})"]
    return [f"broker: embedded Tansu, one per test ({BROKER_WHY}); tests marked `kafka` are skipped. "
            "Install Java 17, Maven and openssl to run the whole suite on Apache Kafka."]


@pytest.hookimpl(trylast=True)      # after pytest's own reordering by fixture
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order_shared_dev(items)
    if ON_KAFKA:
        return
    skip = pytest.mark.skip(reason=f"needs Apache Kafka ({BROKER_WHY})")
    for item in items:
        if "kafka" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    kept = [str(c.directory) for c in _KEPT]
    if kept:
        terminalreporter.write_line(f"Apache Kafka logs and data kept (a test failed): {', '.join(kept)}")
    terminalreporter.write_line(f"broker: {'Apache Kafka ' + KAFKA_VERSION if ON_KAFKA else 'embedded Tansu'}")


_KEPT: list[KafkaCluster] = []


def session_cluster(request: pytest.FixtureRequest, **shape: object) -> Iterator[KafkaCluster]:
    """Start an Apache Kafka cluster for the session; stop it at the end, keeping its logs when a
    test failed."""
    cluster = KafkaCluster(**shape).start()  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        keep = request.session.testsfailed > 0
        # A controlled shutdown takes Apache Kafka up to the 20 s stop timeout at the end of the run
        # (measured: 18.9 s in CI's teardown); it only matters when the logs are kept. Otherwise
        # the data directory is removed right after, so nothing waits for it: SIGKILL at once (a 3 s
        # grace made the SASL_SSL module's teardown 4.5 s).
        cluster.stop(keep=keep, timeout=20.0 if keep else 0.0)
        if keep:
            _KEPT.append(cluster)


@pytest.fixture(scope="session")
def kafka_cluster(request: pytest.FixtureRequest) -> Iterator[KafkaCluster | None]:
    """The run's Apache Kafka (None on Tansu): one broker; three (replication 3, min ISR 2) under
    `make faults` (FAULTS=full), so every fault scenario runs on a replicated cluster."""
    if not ON_KAFKA:
        yield None
        return
    yield from session_cluster(request, nodes=3 if os.environ.get("FAULTS") == "full" else 1)


async def fresh_stack(cluster: KafkaCluster | None, partitions: int | None = None) -> LocalStack:
    """A LocalStack with every topic of the contract, empty: on the shared cluster (topics deleted
    and created again, a consumer group of its own), or on a new embedded broker."""
    if cluster is None:
        s = LocalStack()
    else:
        s = LocalStack(broker=cluster, owns_broker=False, group_id=f"sms-test-{uuid.uuid4().hex[:8]}")
        await delete_topics(s.kafka)
    await s.start_broker(partitions)
    if cluster is not None:
        await wait_for_leaders(s.kafka)
    return s


@pytest.fixture
async def broker(kafka_cluster: KafkaCluster | None) -> AsyncIterator[LocalStack]:
    """A real Kafka-protocol broker with every topic of the contract (Apache Kafka, or Tansu)."""
    s = await fresh_stack(kafka_cluster)
    try:
        yield s
    finally:
        await s.stop()
