#!/usr/bin/env python
"""Benchmark async HTTP clients for calling SMS provider APIs.

Starts an aiohttp "SMS provider" stub in a separate process on 127.0.0.1 (free
port), then, for each server latency and each client variant, sends N POST
requests with C in flight and reports requests/s, p50/p99 latency and client
CPU time per request.

Variants (all run in this same process, one after the other):
  httpx                 httpx.AsyncClient() with its default (httpcore) transport
  httpx+aiohttp         httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(...))
  aiohttp               plain aiohttp.ClientSession(TCPConnector(limit=C))
  aiohttp+uvloop        as "aiohttp", event loop is uvloop
  httpx+aiohttp+uvloop  as "httpx+aiohttp", event loop is uvloop

Each variant gets a short warm-up with the same client (connections are
opened and pooled) before measuring. All traffic goes to 127.0.0.1 only.

Example:
  python benchmarks/http_clients.py --requests 5000 --concurrency 50 --latency-ms 0,20
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import socket
import statistics
import sys
import time
import timeit
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable

import aiohttp
import httpx

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a declared dependency on POSIX
    uvloop = None

try:
    import httpx_aiohttp
except ImportError:  # pragma: no cover
    httpx_aiohttp = None

BASELINE = "aiohttp"
PATH = "/v1/sms/send"


# --------------------------------------------------------------------------
# Server (runs in a child process)
# --------------------------------------------------------------------------


def _serve(sock: socket.socket, ready: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Child-process entry point: serve the SMS stub on an already-bound socket."""
    from aiohttp import web

    try:
        import orjson

        dumps, loads = orjson.dumps, orjson.loads
    except ImportError:  # pragma: no cover
        dumps = lambda o: json.dumps(o).encode()  # noqa: E731
        loads = json.loads

    counter = itertools.count(1)

    async def send(request: web.Request) -> web.Response:
        body = loads(await request.read())
        delay_ms = float(request.query.get("latency_ms", "0"))
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        messages = [
            {"apiMessageId": f"msg-{next(counter):012d}", "accepted": True, "to": m.get("to")}
            for m in body.get("messages", ())
        ]
        return web.Response(body=dumps({"messages": messages}), content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post(PATH, send)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        ready.set()
        await asyncio.Event().wait()  # until the parent terminates us

    if uvloop is not None:
        uvloop.run(main())
    else:  # pragma: no cover
        asyncio.run(main())


class Server:
    """aiohttp stub server in a separate process (spawned, not forked)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(self._sock, self._ready), daemon=True)

    def __enter__(self) -> "Server":
        self._proc.start()
        if not self._ready.wait(timeout=30):
            self.close()
            raise RuntimeError("benchmark server did not start within 30s")
        self._sock.close()  # the child owns it now
        return self

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5)
        self._sock.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------

HEADERS = {
    "Authorization": "Bearer bench-token-0123456789abcdef",
    "Accept": "application/json",
    "X-Correlation-Id": "bench-correlation-id",
}


def make_payload(i: int) -> dict:
    return {
        "messages": [
            {
                "from": "SMSConn",
                "to": f"+4917{i:09d}",
                "text": "Your verification code is 123456",
                "clientMessageId": f"cm-{i}",
            }
        ]
    }


# A "sender" does one request and returns once the response body is parsed.
Sender = Callable[[int], Awaitable[None]]


@dataclass
class Result:
    variant: str
    latency_ms: float
    requests: int
    concurrency: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    ratio: float | None = None


async def _drive(send: Sender, n: int, concurrency: int) -> tuple[list[float], int, float, float]:
    """Send n requests through `send` with `concurrency` workers.

    Returns (per-request latencies in s, error count, wall time, CPU time).
    """
    next_index = iter(range(n)).__next__
    latencies: list[float] = []
    errors = 0
    perf = time.perf_counter

    async def worker() -> None:
        nonlocal errors
        while True:
            try:
                i = next_index()
            except StopIteration:
                return
            t0 = perf()
            try:
                await send(i)
            except Exception:  # noqa: BLE001 - count, don't abort the run
                errors += 1
                continue
            latencies.append(perf() - t0)

    cpu0, wall0 = time.process_time(), perf()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return latencies, errors, perf() - wall0, time.process_time() - cpu0


def _check(data: dict) -> None:
    if not data["messages"][0]["accepted"]:
        raise RuntimeError("message not accepted")


async def _run_httpx(url: str, args: argparse.Namespace, latency_ms: float, aiohttp_transport: bool):
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    if aiohttp_transport:
        client = httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(limits=limits))
    else:
        client = httpx.AsyncClient(limits=limits)
    full_url = f"{url}?latency_ms={latency_ms:g}"
    async with client:

        async def send(i: int) -> None:
            r = await client.post(full_url, json=make_payload(i), headers=HEADERS)
            r.raise_for_status()
            _check(r.json())

        return await _measure(send, args)


async def _run_aiohttp(url: str, args: argparse.Namespace, latency_ms: float):
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    full_url = f"{url}?latency_ms={latency_ms:g}"
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(i: int) -> None:
            async with session.post(full_url, json=make_payload(i), headers=HEADERS) as r:
                r.raise_for_status()
                _check(await r.json())

        return await _measure(send, args)


async def _measure(send: Sender, args: argparse.Namespace):
    warmup = max(args.concurrency, min(500, args.requests // 10))
    await _drive(send, warmup, args.concurrency)
    return await _drive(send, args.requests, args.concurrency)


def _variants() -> list[tuple[str, bool, Callable]]:
    """(name, use_uvloop, coroutine factory(url, args, latency_ms))."""
    v: list[tuple[str, bool, Callable]] = [
        ("httpx", False, lambda u, a, l: _run_httpx(u, a, l, aiohttp_transport=False)),
    ]
    if httpx_aiohttp is not None:
        v.append(("httpx+aiohttp", False, lambda u, a, l: _run_httpx(u, a, l, aiohttp_transport=True)))
    v.append(("aiohttp", False, _run_aiohttp))
    if uvloop is not None:
        v.append(("aiohttp+uvloop", True, _run_aiohttp))
        if httpx_aiohttp is not None:
            v.append(
                ("httpx+aiohttp+uvloop", True, lambda u, a, l: _run_httpx(u, a, l, aiohttp_transport=True))
            )
    return v


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def run_variant(name: str, use_uvloop: bool, factory: Callable, url: str, args, latency_ms: float) -> Result:
    loop_factory = uvloop.new_event_loop if use_uvloop else None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        lat, errors, elapsed, cpu = runner.run(factory(url, args, latency_ms))
    lat.sort()
    done = len(lat)
    return Result(
        variant=name,
        latency_ms=latency_ms,
        requests=args.requests,
        concurrency=args.concurrency,
        errors=errors,
        elapsed_s=round(elapsed, 4),
        rps=round(done / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(_percentile(lat, 0.50) * 1000, 2),
        p99_ms=round(_percentile(lat, 0.99) * 1000, 2),
        cpu_us_per_req=round(cpu / max(done, 1) * 1e6, 1),
    )


def request_build_overhead(number: int = 20000) -> dict:
    """CPU cost of building an httpx.Request (JSON body + 3 headers), vs json.dumps alone."""
    url = "http://127.0.0.1:8080/v1/sms/send?latency_ms=0"
    payload = make_payload(1)
    t_req = min(
        timeit.repeat(lambda: httpx.Request("POST", url, json=payload, headers=HEADERS), number=number, repeat=3)
    )
    t_dumps = min(timeit.repeat(lambda: json.dumps(payload).encode(), number=number, repeat=3))
    return {
        "microbench": "httpx.Request(POST, json=..., 3 headers)",
        "us_per_request": round(t_req / number * 1e6, 2),
        "json_dumps_us": round(t_dumps / number * 1e6, 2),
    }


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--requests", "-n", type=int, default=5000, help="measured requests per variant (default 5000)")
    p.add_argument("--concurrency", "-c", type=int, default=50, help="requests in flight / pool size (default 50)")
    p.add_argument(
        "--latency-ms",
        default="0,20",
        help="comma-separated server-side delays in ms, one benchmark pass each (default '0,20')",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per line instead of a table")
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of variants to run (default: all available)",
    )
    p.add_argument(
        "--no-microbench", action="store_true", help="skip the httpx.Request construction timeit"
    )
    a = p.parse_args(argv)
    if a.requests < 1 or a.concurrency < 1:
        p.error("--requests and --concurrency must be >= 1")
    try:
        a.latencies = [float(x) for x in a.latency_ms.split(",") if x.strip()]
    except ValueError:
        p.error("--latency-ms must be a comma-separated list of numbers")
    if not a.latencies or any(x < 0 for x in a.latencies):
        p.error("--latency-ms needs at least one value >= 0")
    return a


def _print_table(results: list[Result]) -> None:
    cols = ("variant", "latency_ms", "req/s", "vs aiohttp", "p50_ms", "p99_ms", "cpu_us/req", "errors")
    rows = [
        (
            r.variant,
            f"{r.latency_ms:g}",
            f"{r.rps:.0f}",
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.cpu_us_per_req:.0f}",
            str(r.errors),
        )
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    print(line(cols))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def _environment(port: int, args: argparse.Namespace) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "absent"

    return {
        "server": f"127.0.0.1:{port} (separate process, uvloop={uvloop is not None})",
        "requests": args.requests,
        "concurrency": args.concurrency,
        "python": sys.version.split()[0],
        "httpx": ver("httpx"),
        "httpcore": ver("httpcore"),
        "anyio": ver("anyio"),
        # httpcore 1.0.x re-imports sniffio on every lock/semaphore creation; when it is
        # absent (anyio>=4.11 no longer pulls it in) each failed import costs a sys.path scan.
        "sniffio": "present" if find_spec("sniffio") else "absent",
        "aiohttp": ver("aiohttp"),
        "httpx_aiohttp": ver("httpx-aiohttp"),
        "uvloop": ver("uvloop"),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    variants = _variants()
    if args.variants:
        wanted = {v.strip() for v in args.variants.split(",")}
        unknown = wanted - {v[0] for v in variants}
        if unknown:
            print(f"unknown/unavailable variants: {sorted(unknown)}", file=sys.stderr)
            return 2
        variants = [v for v in variants if v[0] in wanted]

    results: list[Result] = []
    with Server() as server:
        url = f"http://127.0.0.1:{server.port}{PATH}"
        env = _environment(server.port, args)
        if args.json:
            print(json.dumps(env), flush=True)
        else:
            print("# " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
        for latency in args.latencies:
            batch = [run_variant(name, uv, f, url, args, latency) for name, uv, f in variants]
            base = next((r for r in batch if r.variant == BASELINE), None)
            for r in batch:
                r.ratio = round(r.rps / base.rps, 3) if base and base.rps else None
                if args.json:
                    print(json.dumps(asdict(r)), flush=True)
            results.extend(batch)

    if not args.json:
        _print_table(results)
    if not args.no_microbench:
        mb = request_build_overhead()
        if args.json:
            print(json.dumps(mb))
        else:
            print(
                f"\nhttpx.Request build (JSON body + 3 headers): {mb['us_per_request']} us/req "
                f"(json.dumps alone: {mb['json_dumps_us']} us)"
            )
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
