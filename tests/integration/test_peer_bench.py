"""A bounded ``bench --peer redpanda-connect`` run: the real peer does the job beside the worker, on
the test session's Apache Kafka (``bench_cluster``; on Tansu, an embedded broker of its own).

Uses the peer binary cached for the current sources and never builds it (``python -m
connector.devtools.peer`` does, once, in minutes): skipped when it is not built, or when Go is absent.
"""

from __future__ import annotations

import io
import shutil

import pytest

from connector.devtools import peer
from connector.devtools.bench import format_table, run_bench
from connector.devtools.kafka_broker import KafkaCluster

pytestmark = pytest.mark.integration


async def test_peer_runs_the_same_job_in_the_same_run(bench_cluster: KafkaCluster | None) -> None:
    if shutil.which("go") is None:
        pytest.skip("Go is absent: the peer cannot be built here")
    if not peer.binary_path().exists():
        pytest.skip(f"peer binary not built for these sources ({peer.binary_path()}); `python -m connector.devtools.peer`")
    # a batch scenario's row only notes that the peer runs per-message scenarios (tests/unit/test_peer.py)
    results = await run_bench(["single"], 300, json_out=True, out=io.StringIO(), baseline_records=0,
                              peer="redpanda-connect", err=None, cluster=bench_cluster)
    [single] = results
    assert single["peer"] == "redpanda-connect" and single["peer_exit"] == 0
    assert single["peer_records"] == 300 and single["peer_outcomes"] == {"accepted": 300}
    assert single["peer_per_s"] > 0 and single["peer_cpu_us_per_record"] > 0
    assert 0 <= single["peer_p50_ms"] <= single["peer_p99_ms"] < 30_000
    # The worker was measured on its own records after the peer: the peer's are not counted twice.
    assert single["outcomes"] == {"accepted": 300} and single["records_per_s"] > 0
    table = format_table(results)
    assert "single: peer redpanda-connect " in table and "; sms-connector " in table
