"""`sms-connector status` against a real broker and a worker sending to the SMPP simulator.

On Apache Kafka the lag is exact; on the embedded Tansu broker it is labelled approximate."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from connector.devtools.embedded_broker import free_port
from connector.devtools.kafka_broker import KafkaCluster
from connector.devtools.stack import Follower, LocalStack, produce
from connector.ops.kafka_probe import KafkaProbe
from connector.ops.snapshot import KafkaState
from connector.ops.status import run_status, status_command
from tests.integration.helpers import many

pytestmark = pytest.mark.integration

SMPP = {"smpp": {"provider": "smpp_rest", "batch_max": "50", "concurrency": "16"}}


def row(text: str, *words: str) -> str:
    """The first line holding every word (as whitespace-separated cells)."""
    for line in text.splitlines():
        if all(w in line.split() for w in words):
            return line
    raise AssertionError(f"no line with {words} in:\n{text}")


async def settled(probe: KafkaProbe, committed: int, timeout: float = 15.0) -> KafkaState:
    """Until the dispatch group has committed ``committed`` offsets on sms.outbound (every 0.25 s)."""
    deadline = time.monotonic() + timeout
    while True:
        state = await probe.sample()
        if state.error is None and state.lag and state.lag[0].committed >= committed:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"group did not commit {committed} within {timeout:.0f}s: {state}")
        await asyncio.sleep(0.25)


async def test_status_once_shows_accepted_by_provider_and_lag_falling_to_zero(stack: LocalStack) -> None:
    records = many(200, keys=50, prefix="status")
    expected = [h[0][1].decode() for _, _, h in records]
    await produce(stack.kafka, records)       # before any worker: all 200 are lag

    on_kafka = isinstance(stack.broker, KafkaCluster)
    probe = KafkaProbe(stack.kafka)
    try:
        before = await probe.sample()
        assert before.error is None, before.error
        # Tansu is recognised by its cluster id. Its ListOffsets undercounts multi-record batches;
        # reading each partition's last batch gives the real end. Kafka's answer is exact.
        assert probe.dev_broker is not on_kafka
        assert before.lag[0].end == 200 and before.lag[0].lag == 200 and before.approx is not on_kafka

        worker = await stack.start_worker(routes=SMPP)
        async with Follower(stack.kafka) as f:
            assert await f.wait_for(expected, timeout=25), f"missing {len(f.tally.missing(expected))}"
        after = await settled(probe, 200)
        assert after.lag[0].lag == 0
        # with exactly-once each transaction's commit marker takes an offset in every partition it
        # wrote: the offsets are an upper bound, said so (the exact count is the Follower's above)
        on_markers = on_kafka and stack.kafka.exactly_once
        assert after.markers is on_markers
        assert (after.terminal_total >= 200) if on_markers else (after.terminal_total == 200)
    finally:
        await probe.close()

    out = io.StringIO()
    assert await run_status([worker.url + "/metrics"], stack.kafka, 0.3, True, out) == 0
    text = out.getvalue()
    assert "metrics from 1/1 worker(s)" in text
    assert row(text, "consumed", "200") and row(text, "accepted", "200")
    assert row(text, "accepted", "smpp_rest", "-", "200", "100.0%")
    assert row(text, "partitions", "assigned", "12/12") and row(text, "in", "flight", "0")
    lag_row = row(text, "sms.outbound", stack.kafka.group_id)
    assert lag_row.split()[2:6] == ["12", "200", "200", "0" if on_kafka else "~0"], lag_row
    if on_kafka:
        assert "Consumer lag" in text and "approx." not in text and "dev broker" not in text
    else:
        assert "Consumer lag (approx.)" in text and "dev broker" in text
    flat = re.sub(r"\s*\n\s*", " ", text)
    if on_markers:
        assert "terminal record offsets on topics (at most: transaction markers and aborted records take " \
               "offsets too): accepted " in flat and "committed input 200; workers' metrics 200" in flat
    else:
        assert "terminal records on topics: accepted 200, failed 0, dlq 0 = 200; committed input 200; " \
               "workers' metrics 200" in flat
    assert "\x1b[" not in text, "not a terminal: plain text"

    # Several URLs are summed (here the same worker twice: every count doubles).
    out = io.StringIO()
    await run_status([worker.url, worker.url + "/metrics"], None, 0, True, out)
    assert "metrics from 2/2 worker(s)" in out.getvalue()
    assert row(out.getvalue(), "accepted", "smpp_rest", "-", "400")


async def test_status_command_reads_the_dev_manifest_and_reports_an_unreachable_worker(
        stack: LocalStack, tmp_path: Path) -> None:
    worker = await stack.start_worker(routes=SMPP)
    manifest = tmp_path / ".sms-connector-dev.json"
    manifest.write_bytes(orjson.dumps({"bootstrap_servers": stack.kafka.bootstrap_servers,
                                       "metrics_url": f"{worker.url}/metrics"}))
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, status_command,
                                     ["--manifest", str(manifest), "--once", "--interval", "0.2"])
    assert result.exit_code == 0, result.output
    assert "metrics from 1/1 worker(s)" in result.output and "Consumer lag (approx.)" in result.output
    assert row(result.output, "sms.outbound", "sms-connector-dispatch", "12")

    dead = f"http://127.0.0.1:{free_port()}/metrics"
    result = await asyncio.to_thread(runner.invoke, status_command,
                                     ["--metrics-url", f"{worker.url}/metrics", "--metrics-url", dead, "--once",
                                      "--interval", "0"],
                                     env={"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": stack.kafka.bootstrap_servers,
                                          "SMS_CONNECTOR_KAFKA__GROUP_ID": stack.kafka.group_id})
    assert result.exit_code == 0, result.output
    assert "metrics from 1/2 worker(s)" in result.output and f"unreachable  {dead}" in result.output
    if isinstance(stack.broker, KafkaCluster):
        assert "Consumer lag" in result.output and "approx." not in result.output, "Kafka's lag is exact"
    else:
        assert "Consumer lag (approx.)" in result.output, "Tansu recognised without the manifest"
