"""A reduced ``sms-connector bench`` run: the harness works and reports every field (not speed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from connector.devtools.bench import FIELDS, format_table, run_bench, summarize_profile
from connector.devtools.kafka_broker import KafkaCluster
from tests.conftest import ON_KAFKA

pytestmark = pytest.mark.integration


async def test_reduced_bench_reports_every_field(bench_cluster: KafkaCluster | None) -> None:
    out = io.StringIO()
    faust_dirs = set(Path.cwd().glob("sms-bench-*-data"))
    results = await run_bench(["single", "batch", "callbacks"], 500, json_out=True, out=out,
                              baseline_records=100, err=None, broker="kafka" if ON_KAFKA else "tansu",
                              cluster=bench_cluster)   # on Tansu: each scenario on a fresh embedded broker
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["scenario"] for r in rows] == ["single", "batch", "callbacks"]
    label = "Apache Kafka" if ON_KAFKA else "embedded Tansu"
    assert all(r["broker"].startswith(label) for r in rows), [r["broker"] for r in rows]
    assert rows == json.loads(json.dumps(results, default=str))

    for r in rows[:2]:
        assert all(r[f] is not None for f in FIELDS), {f: r[f] for f in FIELDS}
        assert r["records"] == 500 and r["outcomes"] == {"accepted": 500}
        assert r["records_per_s"] > 0 and r["ceiling_per_s"] > 0 and r["baseline_per_s"] > 0
        assert r["ceiling_errors"] == 0
        # the ratio is reported to 3 decimals: half its last digit is its precision (0.024 for 0.0237)
        assert r["ratio_to_ceiling"] == pytest.approx(r["records_per_s"] / r["ceiling_per_s"], rel=0.01, abs=0.0005)
        assert r["speedup_vs_baseline"] == pytest.approx(r["records_per_s"] / r["baseline_per_s"], rel=0.01)
        assert 0 <= r["p50_ms"] <= r["p99_ms"] < 30_000
        assert r["latency_records"] >= 200
        assert 10 < r["peak_rss_mb"] < 2000
        assert r["target_met"] in (True, False)
        assert r["cpu_pct"]["worker"] > 0 and r["worker_cpu_us_per_record"] > 0
        assert r["worker_cpu_s_per_1k"] == pytest.approx(r["worker_cpu_us_per_record"] / 1000, abs=0.001)
    # The baseline is measured once per provider latency: batch reuses single's 0 ms figure.
    assert rows[1]["baseline_per_s"] == rows[0]["baseline_per_s"] and rows[1]["baseline_from"] == "single"
    assert rows[0]["baseline_records"] == 100
    # the faust baseline keeps its data directory in a temporary place, removed when it exits
    assert set(Path.cwd().glob("sms-bench-*-data")) == faust_dirs

    cb = rows[2]
    assert set(FIELDS) <= set(cb)
    if cb["available"]:
        assert cb["records"] == 500 and sum(cb["status_codes"].values()) == 500
        assert cb["records_per_s"] > 0 and 0 <= cb["p50_ms"] <= cb["p99_ms"]
    else:
        assert cb["records"] == 0 and cb["note"]

    table = format_table(results)
    assert table.splitlines()[0].startswith("scenario") and all(s in table for s in ("single", "batch", "callbacks"))
    assert f"broker: {rows[0]['broker']}" in table
    assert "CPU s/1k" in table.splitlines()[0]


def test_profile_summary_and_table_of_collapsed_stacks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "p.txt"
    f.write_text("main (connector/cli.py:1);send (aiohttp/client.py:10) 3\n"
                 "main (connector/cli.py:1);outcome (connector/pipeline.py:5);validate (<string>:2) 1\n")
    p = summarize_profile(str(f))
    assert p["samples"] == 4
    assert p["self_pct"][0] == ("send (aiohttp/client.py)", 75.0)
    assert dict(p["self_by_package_pct"]) == {"aiohttp": 75.0, "<generated>": 25.0}
    assert "main (connector/cli.py)" not in dict(p["inclusive_pct"])
    row = {"scenario": "single", "records": 10, "records_per_s": 5.0, "target": "ratio_to_ceiling >= 0.6",
           "target_met": False, "cpu_pct": {"worker": 90.0}, "worker_cpu_us_per_record": 300.0,
           "ceiling_cpu_us_per_record": 120.0, "profile": p}
    table = format_table([row])
    assert "target not met" in table and "worker's CPU" in table and "aiohttp 75%" in table


def test_a_starved_worker_is_called_bound_by_the_machine() -> None:
    """CPU shares alone call a worker that got 35% of a core "not saturated"; the run-queue wait
    (``/proc/<pid>/schedstat``) says it wanted the rest and another process had it."""
    row = {"scenario": "latency50", "records": 10, "records_per_s": 5.0, "target": "records_per_s >= 2000",
           "target_met": False, "cpu_pct": {"worker": 35.0}, "cpu_wait_pct": {"worker": 55.0}}
    assert "Bound by the machine" in format_table([row]) and "waited for a CPU 55%" in format_table([row])
    row["cpu_wait_pct"] = {"worker": 5.0}
    assert "not CPU-saturated" in format_table([row])
