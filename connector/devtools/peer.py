"""The real peer of ``sms-connector bench --peer redpanda-connect``: the Benthos engine doing our job.

The peer is a Go program in ``benchmarks/peer/`` (see its README): the MIT-licensed Benthos core
of Redpanda Connect (``github.com/redpanda-data/benthos/v4`` v4.60.0, its own ``io`` and ``pure``
components) plus a Kafka input and output written here on franz-go, because that core has none.
This module builds it once (``go build``, niced) into a cache keyed by a hash of its sources and
go.sum, writes its pipeline config, and measures it the way the bench measures the worker.

The job, as a Benthos config: the ``sms_kafka`` input (one consumer-group member on
``sms.outbound``), ``pipeline.threads`` = the scenario's concurrency (each thread holds one record,
so that many provider calls are in flight), a ``branch`` whose ``http`` processor POSTs the SMPP
REST request our adapter builds (``{"Messages": [{channel, to, content, clientMessageId}]}``,
Bearer key) to the same simulator, a ``mapping`` building the result record (outcome, ids,
recipient, ``received_at`` = the input's Kafka timestamp), and the ``sms_kafka`` output to
``sms.outbound.accepted`` keyed like the input, ``max_in_flight`` = the concurrency. Offsets are
committed once the result is written, so progress is watched through the group's committed
offsets, exactly like the worker's.

Measured per scenario (only per-message scenarios: ``batch_max`` 1): records/s from the Kafka
timestamps of the first and last result on a pre-produced backlog, the peer's CPU per record over
that window, then p50 / p99 at a steady offered rate of ``latency_load`` x its own throughput.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

PEERS = ("redpanda-connect",)
PEER_SRC = Path(__file__).resolve().parents[2] / "benchmarks" / "peer"
SMPP_PATH = "/communication/message/smpp/sms"
BUILD_TIMEOUT_S = 1800
# The embedded broker (Tansu) closes the connection on franz-go's newest ApiVersions request
# instead of answering UNSUPPORTED_VERSION; capped at Kafka 3.5's protocol versions it works.
EMBEDDED_MAX_VERSION = "3.5.0"


class PeerUnavailable(RuntimeError):
    """The peer cannot be built or run here (no Go toolchain, build failure); the bench goes on without it."""


def source_hash(src: Path = PEER_SRC) -> str:
    """Hash of what the binary is built from: go.mod, go.sum and the Go sources."""
    h = hashlib.sha256()
    for p in sorted(src.glob("*")):
        if p.suffix == ".go" or p.name in ("go.mod", "go.sum"):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def binary_path(src: Path = PEER_SRC, cache: Path | None = None) -> Path:
    """Where the binary for these sources is cached (it may not exist yet): by default
    ``~/.cache/sms-connector/peer/<source hash>/peer``."""
    return (cache or Path.home() / ".cache" / "sms-connector" / "peer") / source_hash(src) / "peer"


def build_command(out: Path) -> list[str]:
    go = shutil.which("go")
    if go is None:
        raise PeerUnavailable("the Go toolchain (go) is not on PATH")
    nice = [n, "-n", "10"] if (n := shutil.which("nice")) else []
    return [*nice, go, "build", "-trimpath", "-o", str(out), "."]


def ensure_binary(say: Callable[[str], None] = lambda _: None, src: Path = PEER_SRC,
                  cache: Path | None = None) -> Path:
    """The cached peer binary, built first if these sources have none (minutes, once)."""
    path = binary_path(src, cache)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"peer.{os.getpid()}.tmp")
    cmd = build_command(tmp)
    say(f"peer: building {src} into {path} (once; Go modules from the module proxy, takes minutes)")
    try:
        done = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"go build did not finish in {BUILD_TIMEOUT_S}s") from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PeerUnavailable(f"go build failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    os.replace(tmp, path)
    return path


def pipeline_config(*, bootstrap: str, group: str, sim_url: str, api_key: str, concurrency: int,
                    topic_in: str, topic_out: str, fetch_max_wait_ms: int = 100,
                    kafka_max_version: str = "") -> dict[str, Any]:
    """The Benthos config of the peer's job (written as JSON, which is YAML)."""
    kafka = {"seed_brokers": [s.strip() for s in bootstrap.split(",") if s.strip()],
             "max_version": kafka_max_version}
    request = ('root.Messages = [{"channel": "sms", "to": this.recipient.phone.trim_prefix("+"), '
               '"content": this.text, "clientMessageId": this.client_message_id}]')
    result = "\n".join([
        'let answer = this.answer | {}',
        'root.schema_version = 1',
        'root.outcome = if errored() || $answer.accepted != true { "failed" } else { "accepted" }',
        'root.client_message_id = this.client_message_id',
        'root.recipient = this.recipient',
        'root.provider = "smpp_rest"',
        'root.provider_message_id = $answer.apiMessageId',
        'root.received_at = @kafka_timestamp',
        'root.completed_at = now().ts_format("2006-01-02T15:04:05.000Z07:00", "UTC")',
    ])
    return {
        "http": {"enabled": False},
        "logger": {"level": "WARN", "format": "logfmt"},
        "metrics": {"none": {}},
        "input": {"sms_kafka": {**kafka, "topics": [topic_in], "consumer_group": group,
                                "fetch_max_wait": f"{fetch_max_wait_ms}ms", "commit_period": "100ms"}},
        "pipeline": {"threads": concurrency, "processors": [
            {"branch": {"request_map": request,
                        "processors": [{"http": {
                            "url": sim_url.rstrip("/") + SMPP_PATH, "verb": "POST", "timeout": "10s",
                            "headers": {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                                        "Accept": "application/json"}}}],
                        "result_map": "root.answer = this.messages.index(0)"}},
            {"mapping": result},
        ]},
        "output": {"sms_kafka": {**kafka, "topic": topic_out, "max_in_flight": concurrency}},
    }


def command(binary: Path, config_path: Path) -> list[str]:
    return [str(binary), "-c", str(config_path)]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def lint_command(binary: Path, config_path: Path) -> list[str]:
    """Benthos' own config linter on the generated config (exit 0 when it is valid)."""
    return [str(binary), "lint", str(config_path)]


async def measure_peer(stack: Any, kafka: Any, sim_url: str, *, concurrency: int, n: int, keys: int, tag: str,
                       latency_load: float, latency_seconds: float, say: Callable[[str], None],
                       written: dict[Any, int], binary: Path, kafka_max_version: str = "") -> dict[str, Any]:
    """Run the peer on ``n`` fresh records (then a steady-rate latency phase); ``peer_*`` fields."""
    from connector.devtools import bench as b
    from connector import contract as topics

    topic_in = topics.spec("outbound").name
    topic_out = topics.spec("accepted").name
    result_topics = [topics.spec(r).name for r in ("accepted", "failed", "dlq")]
    group = f"sms-bench-{tag}"
    start = await b.position_group(kafka, group, topic_in, written)
    results_start = await b.end_offsets(kafka, result_topics)
    say(f"peer: redpanda-connect (benthos engine, {concurrency} threads) on {n:,} records")
    b._track(written, topic_in, await b.produce_tracked(kafka, b.make_records(tag + "-t", n, keys), topic_in))
    from connector.devtools.simulators import SIMULATORS

    config = pipeline_config(bootstrap=kafka.bootstrap_servers, group=group, sim_url=sim_url,
                             api_key=SIMULATORS[b.SMPP].default_credentials()["api_key"], concurrency=concurrency,
                             topic_in=topic_in, topic_out=topic_out,
                             fetch_max_wait_ms=getattr(kafka, "fetch_max_wait_ms", 100),
                             kafka_max_version=kafka_max_version)
    cfg = write_config(stack.logdir / f"{tag}.yaml", config)
    log = stack.logdir / f"{tag}.log"
    import asyncio

    with open(log, "ab") as fh:
        proc = await asyncio.create_subprocess_exec(
            *command(binary, cfg), stdout=fh, stderr=fh, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    peer = b.Process("peer redpanda-connect", proc, "", log)
    row: dict[str, Any] = {"peer": "redpanda-connect", "peer_log": str(log), "peer_config": str(cfg)}
    try:
        cpu = b.CpuMeter({"peer": proc.pid, **{k: v for k, v in _stack_pids(stack).items()}}).start()
        rss = b.RssSampler(proc.pid).start()
        async with b.GroupWatch(kafka, group) as watch:
            await watch.wait(start, b._upto(start, written), label="peer", say=say, timeout=120 + n / 100, proc=peer)
        await cpu.stop()
        seen: dict[Any, int] = {}
        terminals = await b.collect(kafka, results_start, tag + "-t-", n, seen_ends=seen)
        rate, window = b.throughput(terminals)
        row.update(peer_records=len(terminals), peer_window_s=round(window, 2), peer_outcomes=b._outcomes(terminals))
        if terminals:
            ts = [t.timestamp_ms / 1000 for t in terminals]
            shares = cpu.over(min(ts), max(ts))[0]
            row["peer_cpu_pct"] = shares
            if shares.get("peer") and rate:
                row["peer_cpu_us_per_record"] = round(shares["peer"] / 100 / rate * 1e6, 1)
        row["peer_per_s"] = round(rate, 1) if rate else rate
        say(f"peer: {len(terminals):,} results, {b._fmt(rate)} records/s")
        if rate:
            lrate = max(50.0, rate * latency_load)
            m = int(min(n, max(200, lrate * latency_seconds)))
            say(f"peer: latency at {lrate:,.0f} records/s offered ({m:,} records)")
            before = b._upto(start, written)
            lstart = {tp: max(off, seen.get(tp, 0)) for tp, off in (await b.end_offsets(kafka, result_topics)).items()}
            b._track(written, topic_in,
                     await b.produce_tracked(kafka, b.make_records(tag + "-l", m, keys), topic_in, rate=lrate))
            async with b.GroupWatch(kafka, group) as watch:
                await watch.wait(before, b._upto(start, written), label="peer: latency", say=say,
                                 timeout=120 + m / 100, proc=peer)
            lat = sorted(t.timestamp_ms - t.received_ms for t in await b.collect(kafka, lstart, tag + "-l-", m)
                         if t.received_ms is not None)
            p50, p99 = b.percentile(lat, 0.50), b.percentile(lat, 0.99)
            row.update(peer_latency_records=len(lat), peer_p50_ms=None if p50 is None else round(p50, 1),
                       peer_p99_ms=None if p99 is None else round(p99, 1))
        await rss.stop()
        row["peer_peak_rss_mb"] = round(rss.hwm_mb, 1)
    finally:
        row["peer_exit"] = await peer.stop(10)
    return row


async def peer_phase(stack: Any, kafka: Any, sim_url: str, sc: Any, o: Any, concurrency: int,
                     say: Callable[[str], None], written: dict[Any, int]) -> dict[str, Any]:
    """The bench's ``--peer`` step of one dispatch scenario: ``peer_*`` fields for its row."""
    row: dict[str, Any] = {"peer": o.peer}
    if o.peer not in PEERS:
        return {**row, "peer_note": f"unknown peer {o.peer!r} (known: {', '.join(PEERS)})"}
    if sc.batch_max != 1:
        return {**row, "peer_note": "peer runs per-message scenarios only (batch_max 1)"}
    try:
        binary = ensure_binary(say)
    except PeerUnavailable as exc:
        say(f"peer: unavailable: {exc}")
        return {**row, "peer_note": f"peer unavailable: {exc}"}
    return {**row, **await measure_peer(stack, kafka, sim_url, concurrency=concurrency, n=o.records, keys=o.keys,
                                        tag=f"{o.run_id}-peer-{sc.name}", latency_load=o.latency_load,
                                        latency_seconds=o.latency_seconds, say=say, written=written,
                                        binary=binary,
                                        kafka_max_version=EMBEDDED_MAX_VERSION if o.bootstrap_servers is None and o.broker == "tansu"
                                        else "")}


def side_by_side(r: dict[str, Any]) -> str:
    """One line for the table's notes: the worker and the peer, same job, same run."""
    from connector.devtools.bench import _fmt

    head = f"{r.get('scenario')}: peer {r.get('peer')}"
    if r.get("peer_note"):
        return f"{head}: {r['peer_note']}"

    def fig(rate: Any, p99: Any, cpu: Any) -> str:
        return f"{_fmt(rate)} records/s, p99 {_fmt(p99, '.1f')} ms, {_fmt(cpu, '.0f')} us CPU/record"

    return (f"{head} {fig(r.get('peer_per_s'), r.get('peer_p99_ms'), r.get('peer_cpu_us_per_record'))}; "
            f"sms-connector {fig(r.get('records_per_s'), r.get('p99_ms'), r.get('worker_cpu_us_per_record'))}.")


def _stack_pids(stack: Any) -> dict[str, int]:
    from connector.devtools import bench as b

    pids: dict[str, int] = {}
    if (broker := b.broker_pid(stack)) is not None:
        pids["broker"] = broker
    sim = stack.simulators.get("smpp_rest")
    if sim is not None:
        pids["simulator"] = sim.proc.pid
    return pids


def main(argv: list[str] | None = None) -> int:
    """``python -m connector.devtools.peer``: build (or find) the cached peer binary and print its path."""
    try:
        print(ensure_binary(lambda s: print(s, file=sys.stderr)))
    except PeerUnavailable as exc:
        print(f"peer unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
