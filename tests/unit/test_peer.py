"""The real peer's runner (``connector.devtools.peer``): its config and command are well-formed.

These never build Go code. The checks that need the peer binary (Benthos' own linter on the
generated config, a bounded run) use the cached binary when ``python -m connector.devtools.peer`` has built
it for the current sources, and are skipped otherwise (and when Go is absent) with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from connector.devtools import peer
from connector.devtools.bench import format_table

CONFIG = dict(bootstrap="127.0.0.1:9092, 127.0.0.1:9093", group="g1", sim_url="http://127.0.0.1:8001/",
              api_key="k", concurrency=64, topic_in="sms.outbound", topic_out="sms.outbound.accepted")


def test_pipeline_config_runs_the_same_job_at_the_same_concurrency() -> None:
    c = peer.pipeline_config(**CONFIG)
    assert json.loads(json.dumps(c)) == c     # written as JSON, which is YAML
    assert c["input"]["sms_kafka"] == {"seed_brokers": ["127.0.0.1:9092", "127.0.0.1:9093"],
                                       "max_version": "", "topics": ["sms.outbound"], "consumer_group": "g1",
                                       "fetch_max_wait": "100ms", "commit_period": "100ms"}
    assert c["pipeline"]["threads"] == 64 and c["output"]["sms_kafka"]["max_in_flight"] == 64
    assert c["output"]["sms_kafka"]["topic"] == "sms.outbound.accepted"
    branch = c["pipeline"]["processors"][0]["branch"]
    http = branch["processors"][0]["http"]
    assert http["url"] == "http://127.0.0.1:8001/communication/message/smpp/sms" and http["verb"] == "POST"
    assert http["headers"]["Authorization"] == "Bearer k"
    # The SMPP REST request shape our adapter sends: Messages[{channel, to (no +), content, clientMessageId}].
    for field in ('"channel": "sms"', 'this.recipient.phone.trim_prefix("+")', '"content": this.text',
                  '"clientMessageId": this.client_message_id'):
        assert field in branch["request_map"]
    result = c["pipeline"]["processors"][1]["mapping"]
    assert "root.received_at = @kafka_timestamp" in result and "root.client_message_id" in result


def test_command_and_cache_are_keyed_by_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert peer.command(Path("/c/peer"), Path("/l/p.yaml")) == ["/c/peer", "-c", "/l/p.yaml"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "go.sum").write_text("a")
    (src / "main.go").write_text("package main")
    (src / "README.md").write_text("docs do not change the binary")
    cache = tmp_path / "cache"
    first = peer.binary_path(src, cache)
    assert first.parent.parent == tmp_path / "cache" and first.name == "peer"
    (src / "README.md").write_text("edited")
    assert peer.binary_path(src, cache) == first
    (src / "go.sum").write_text("b")
    assert peer.binary_path(src, cache) != first
    # A cached binary is used as is: nothing is built.
    monkeypatch.setattr(peer, "build_command", lambda out: pytest.fail("built although cached"))
    path = peer.binary_path(src, cache)
    path.parent.mkdir(parents=True)
    path.write_text("")
    assert peer.ensure_binary(src=src, cache=cache) == path


def test_without_go_the_peer_is_unavailable_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer.shutil, "which", lambda name: None)
    with pytest.raises(peer.PeerUnavailable, match="Go toolchain"):
        peer.ensure_binary(cache=tmp_path)


def test_side_by_side_note_in_the_table() -> None:
    row = {"scenario": "single", "records": 10, "records_per_s": 4000.0, "p99_ms": 120.0,
           "worker_cpu_us_per_record": 230.0, "peer": "redpanda-connect", "peer_per_s": 3000.0,
           "peer_p99_ms": 110.0, "peer_cpu_us_per_record": 150.0}
    table = format_table([row])
    assert ("single: peer redpanda-connect 3,000 records/s, p99 110.0 ms, 150 us CPU/record; "
            "sms-connector 4,000 records/s, p99 120.0 ms, 230 us CPU/record.") in table
    skipped = format_table([{**row, "peer_note": "peer runs per-message scenarios only (batch_max 1)"}])
    assert "single: peer redpanda-connect: peer runs per-message scenarios only" in skipped


def _cached_binary() -> Path:
    if shutil.which("go") is None:
        pytest.skip("Go is absent: the peer cannot be built here")
    path = peer.binary_path()
    if not path.exists():
        pytest.skip(f"peer binary not built for these sources ({path}); `python -m connector.devtools.peer` builds it")
    return path


def test_benthos_lints_the_generated_config(tmp_path: Path) -> None:
    binary = _cached_binary()
    cfg = peer.write_config(tmp_path / "peer.yaml", peer.pipeline_config(**CONFIG))
    done = subprocess.run(peer.lint_command(binary, cfg), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_result_mapping_builds_the_result_record(tmp_path: Path) -> None:
    """Benthos runs the peer's result mapping on one processed message (stdin to stdout)."""
    binary = _cached_binary()
    mapping = peer.pipeline_config(**CONFIG)["pipeline"]["processors"][1]["mapping"]
    config = {"logger": {"level": "ERROR"}, "http": {"enabled": False}, "input": {"stdin": {}},
              "pipeline": {"processors": [{"mapping": 'meta kafka_timestamp = "2026-12-06T09:00:00.123Z"'},
                                          {"mapping": mapping}]},
              "output": {"stdout": {}}}
    cfg = peer.write_config(tmp_path / "mapping.yaml", config)
    msg = {"client_message_id": "c1", "recipient": {"phone": "+14155550100"}, "text": "hi",
           "answer": {"accepted": True, "apiMessageId": "m1"}}
    refused = {**msg, "client_message_id": "c2", "answer": {"accepted": False}}
    done = subprocess.run(peer.command(binary, cfg), input=json.dumps(msg) + "\n" + json.dumps(refused) + "\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip(), done.stdout + done.stderr
    # Benthos may write the two results in either order: each is found by its id
    results = {r["client_message_id"]: r for r in map(json.loads, done.stdout.strip().splitlines())}
    assert set(results) == {"c1", "c2"}, done.stdout
    out = results["c1"]
    assert {k: v for k, v in out.items() if k != "completed_at"} == {
        "schema_version": 1, "outcome": "accepted", "client_message_id": "c1",
        "recipient": {"phone": "+14155550100"}, "provider": "smpp_rest", "provider_message_id": "m1",
        "received_at": "2026-12-06T09:00:00.123Z"}
    assert out["completed_at"].endswith("Z")
    second = results["c2"]
    assert second["outcome"] == "failed"
    assert second["provider_message_id"] is None


def test_the_peer_measures_the_broker_process_on_either_broker(tmp_path: Path) -> None:
    """``bench --broker kafka --peer ...`` read ``stack.broker.process``, which only the embedded
    broker has: an Apache Kafka cluster's process is its first node's."""
    from types import SimpleNamespace

    from connector.devtools.kafka_broker import KafkaCluster, KafkaNode

    cluster = KafkaCluster(directory=tmp_path)
    node = KafkaNode(1, tmp_path / "node-1", 1, 2)
    node.process = SimpleNamespace(pid=4242)  # type: ignore[assignment]
    cluster.members.append(node)
    sim = SimpleNamespace(proc=SimpleNamespace(pid=7))
    assert peer._stack_pids(SimpleNamespace(broker=cluster, simulators={"smpp_rest": sim})) == {"broker": 4242, "simulator": 7}
    tansu = SimpleNamespace(process=SimpleNamespace(pid=99))
    assert peer._stack_pids(SimpleNamespace(broker=tansu, simulators={})) == {"broker": 99}


async def test_a_batch_scenario_notes_that_the_peer_runs_per_message_scenarios_only() -> None:
    from types import SimpleNamespace

    row = await peer.peer_phase(None, None, "", SimpleNamespace(batch_max=200), SimpleNamespace(peer="redpanda-connect"),
                                16, print, {})
    assert row == {"peer": "redpanda-connect", "peer_note": "peer runs per-message scenarios only (batch_max 1)"}
