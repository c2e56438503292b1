"""The topic contract, loaded from ``topics/topics.toml`` and ``topics/schemas/*.json``.

The folder installs as ``connector.contract`` (pyproject.toml maps it): import it as
``from connector import contract``.

This package owns the names, partition counts, retention and keys of every topic, and the JSON
Schema of every record type. The worker, the CLI, the Helm chart and the README all read it here,
so the contract analytics teams read is the one the code enforces.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).parent
SCHEMA_DIR = HERE / "schemas"

# Headers every output record carries (the input's position: one can always trace back).
HEADER_SOURCE_TOPIC = "sms.source.topic"
HEADER_SOURCE_PARTITION = "sms.source.partition"
HEADER_SOURCE_OFFSET = "sms.source.offset"
# Headers added to dead-lettered records.
HEADER_ERROR_REASON = "sms.error.reason"
HEADER_ERROR_MESSAGE = "sms.error.message"
HEADER_ERROR_FIELD = "sms.error.field"
HEADER_ERROR_AT = "sms.error.at"
# Added by `sms-connector dlq replay`: where the replayed record came from (topic:partition:offset).
HEADER_REPLAYED_FROM = "sms.replayed-from"
# Carried by records on the retry topic (connector.retries).
HEADER_RETRY_ATTEMPTS = "sms.retry.attempts"   # provider calls made so far
HEADER_RETRY_PASSES = "sms.retry.passes"       # hand-offs so far (1 on the first retry record)
HEADER_RETRY_DUE_AT = "sms.retry.due-at"       # epoch milliseconds: not sent again before
HEADER_RETRY_TOKEN = "sms.retry.token"         # this hand-off's id in the ledger (a replayed older one is skipped)
HEADER_RETRY_REASON = "sms.retry.reason"       # the error that caused the hand-off
HEADER_SCHEDULE_CHECK_AT = "sms.schedule.check-at"  # epoch ms: sms.outbound.scheduled's reader looks again


@dataclass(frozen=True, slots=True)
class TopicSpec:
    role: str
    name: str
    direction: str
    partitions: int
    retention_ms: int
    cleanup_policy: str
    key: str
    schema: str
    description: str

    @property
    def configs(self) -> dict[str, str]:
        """Kafka topic configs, as strings (CreateTopics / Strimzi KafkaTopic ``config``)."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


@cache
def specs() -> dict[str, TopicSpec]:
    """Role -> TopicSpec, in file order."""
    raw = tomllib.loads((HERE / "topics.toml").read_text())
    return {role: TopicSpec(role=role, **fields) for role, fields in raw.items()}


def spec(role: str) -> TopicSpec:
    return specs()[role]


@cache
def schema(name: str) -> dict[str, Any]:
    """A record type's JSON Schema by file name (e.g. ``outbound_sms.json``)."""
    return orjson.loads((SCHEMA_DIR / name).read_bytes())
