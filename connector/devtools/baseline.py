"""The "typical baseline" of ``sms-connector bench``: what the frameworks' documentation leads to.

A faust-streaming agent with ``concurrency=50`` consuming ``sms.outbound``, awaiting one POST per
record on one shared ``httpx.AsyncClient`` (default transport) to the SMPP REST API, and sending
one result record per event with ``topic.send()``. Nothing clever on purpose: it is the reference
point the connector's throughput is compared with (the README's "263-313 records/s at 20 ms").

Run by the bench as a subprocess::

    python -m connector.devtools.baseline --bootstrap 127.0.0.1:9092 --url http://127.0.0.1:8001 \
        --records 2000 --group sms-bench-baseline-1

It stops itself (SIGTERM to its own faust worker) once it has sent ``--records`` result records
and prints one JSON line (records, seconds from first to last result). The bench times it the same
way as the worker: from the Kafka timestamps of the first and last result records.

Embedded-broker notes: Tansu lacks the idempotent producer, and faust only enables it for
``processing_guarantee="exactly_once"``; this app keeps the default ``at_least_once``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

SMPP_PATH = "/communication/message/smpp/sms"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_app(args: argparse.Namespace) -> Any:
    import faust
    import httpx

    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap.split(',')[0]}",
        store="memory://",
        datadir=args.datadir,     # faust's default is ./<app id>-data, left behind in the caller's directory
        web_enabled=True,
        web_host="127.0.0.1",
        web_port=args.web_port,
        web_bind="127.0.0.1",
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        producer_max_batch_size=256 * 1024,
        producer_linger=0.005,
        producer_acks=-1,
        processing_guarantee="at_least_once",   # exactly_once would turn on the idempotent producer
        worker_redirect_stdouts=False,
    )
    outbound = app.topic(args.topic_in, key_serializer="raw", value_serializer="raw")
    results = app.topic(args.topic_out, key_serializer="raw", value_serializer="raw")
    client = httpx.AsyncClient(timeout=10.0)   # one shared client, default transport
    url = args.url.rstrip("/") + SMPP_PATH
    headers = {"Authorization": f"Bearer {args.api_key}"}
    state = {"done": 0, "first": 0.0}

    @app.agent(outbound, concurrency=args.concurrency)
    async def send_sms(stream: Any) -> None:
        async for event in stream.events():
            msg = json.loads(event.value)
            phone = msg["recipient"]["phone"]
            r = await client.post(url, headers=headers, json={"Messages": [{
                "channel": "sms", "to": phone.lstrip("+"), "content": msg["text"],
                "clientMessageId": msg["client_message_id"]}]})
            r.raise_for_status()
            answer = r.json()["messages"][0]
            now = time.time()
            result = {"schema_version": 1,
                      "outcome": "accepted" if answer["accepted"] else "failed",
                      "client_message_id": msg["client_message_id"],
                      "recipient": msg["recipient"],
                      "provider": "smpp_rest",
                      "provider_message_id": answer.get("apiMessageId"),
                      "received_at": _iso(event.message.timestamp),
                      "completed_at": _iso(now)}
            await results.send(key=event.key, value=json.dumps(result).encode())
            state["done"] += 1
            if state["done"] == 1:
                state["first"] = now
            if args.records and state["done"] == args.records:
                print(json.dumps({"records": state["done"], "elapsed_s": round(now - state["first"], 3)}),
                      flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers (the first is used).")
    p.add_argument("--url", required=True, help="SMPP REST simulator base URL (http://127.0.0.1:PORT).")
    p.add_argument("--api-key", default="sim-smpp-key")
    p.add_argument("--records", type=int, default=0, help="Stop after this many results (0: run until SIGTERM).")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--group", default=f"sms-bench-baseline-{os.getpid()}", help="faust app id = consumer group.")
    p.add_argument("--topic-in", default="sms.outbound")
    p.add_argument("--topic-out", default="sms.outbound.accepted")
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--web-port", type=int, default=0)
    p.add_argument("--loglevel", default="WARNING")
    p.add_argument("--datadir", default=None, help="faust's data directory (default: a temporary one, removed "
                                                   "on exit)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.web_port:
        from connector.devtools.embedded_broker import free_port

        args.web_port = free_port()
    import faust

    temporary = args.datadir is None
    if temporary:
        args.datadir = tempfile.mkdtemp(prefix="sms-bench-faust-")
    try:
        app = build_app(args)
        logging.getLogger("faust").setLevel(args.loglevel)
        worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()
    finally:
        if temporary:
            shutil.rmtree(args.datadir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
