"""Wiring of the worker process: settings and roles in, running components out.

No business logic. Roles (``worker --role``):

- ``dispatch``: the opt-out table, then the ``Dispatcher`` (sms.outbound -> providers -> results).
- ``callbacks``: ``POST /callbacks/<provider>`` on the HTTP server, and the ``Correlator`` that
  joins receipts to outbound messages (and polls Ogangi statuses).
- ``pollers``: MO pollers (ThingSpace history, Ogangi getMOMessages).

Every role shares the HTTP server (/metrics, /healthz, /readyz) and one ``RouteSender`` per
route. The process runs until SIGINT/SIGTERM, then stops the roles and closes the senders.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any, Awaitable, Callable, Coroutine

from aiokafka import AIOKafkaProducer

from connector import metrics, tracing
from connector.breaker import CircuitBreaker
from connector.config import Settings
from connector.destinations import DestinationRules
from connector.kafka import access_problem, client_options
from connector.policy import RetryPolicy
from connector.providers import REGISTRY, Capability, has
from connector.ratelimit import RouteLimiter
from connector.routing import Router
from connector.sender import RouteSender
from connector.transport import HttpTransport
from connector.web import make_app, serve

log = logging.getLogger("sms_connector.worker")

ReadyPart = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]


def build_senders(settings: Settings) -> dict[str, RouteSender]:
    d, h = settings.dispatch, settings.http
    retry = RetryPolicy(max_attempts=d.retry_max_attempts, base_delay_s=d.retry_base_delay_s,
                        max_delay_s=d.retry_max_delay_s, max_retry_after_s=d.retry_after_max_s)
    senders: dict[str, RouteSender] = {}
    for name, route in settings.routes.items():
        c = route.common
        provider = REGISTRY[c.provider](route.provider, route=name, segment_policy=c.segment_policy,
                                        max_segments=c.max_segments, sender=c.sender,
                                        number_check=c.number_check)
        transport = HttpTransport(timeout_s=h.provider_timeout_s,
                                  max_connections=min(h.provider_max_connections, c.concurrency))
        if tracing.active():
            transport = tracing.TracedTransport(transport, name, c.provider)
        limiter = RouteLimiter(c.rate_limit or None, min_rate=c.rate_limit_min, concurrency=c.concurrency,
                               margin_s=c.rate_limit_margin_ms / 1000)
        breaker = CircuitBreaker(failure_ratio=c.breaker_failure_ratio, window_s=c.breaker_window_s,
                                 min_calls=c.breaker_min_calls, open_s=c.breaker_open_s,
                                 max_open_s=c.breaker_max_open_s, on_change=_circuit_logger(name))
        senders[name] = RouteSender(provider, transport, concurrency=c.concurrency, batch_max=c.batch_max,
                                    batch_linger_ms=c.batch_linger_ms, retry=retry, limiter=limiter,
                                    breaker=breaker, failover_route=c.failover_route or None,
                                    in_doubt=c.in_doubt, smart_encoding=c.smart_encoding,
                                    destinations=DestinationRules.from_settings(c))
    return senders


def _circuit_logger(route: str) -> Callable[[str, str], None]:
    def changed(old: str, new: str) -> None:
        metrics.CIRCUIT_TRANSITIONS.labels(route, new).inc()
        log.log(logging.WARNING if new == "open" else logging.INFO, "route %s: circuit %s -> %s", route, old, new,
                extra={"route": route, "circuit": new})
    return changed


# Thousands of records in flight keep tens of thousands of objects alive, and CPython's default
# thresholds (700, 10, 10) scan them over and over: in a profile of the dispatch pipeline, cyclic
# GC was ~28% of its CPU. Objects made at start-up (modules, settings, clients) are frozen out of
# collection, and young collections run every 50,000 allocations instead of 700. Cycles are still
# collected; memory is watched by the soak benchmark.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def inbound_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer of callbacks, pollers and the correlator: acks=all, small batches, no linger
    (a callback answers 2xx only after its record is acknowledged)."""
    k = settings.kafka
    producer = AIOKafkaProducer(**client_options(k), acks="all", enable_idempotence=k.idempotent_producer,
                                linger_ms=1, request_timeout_ms=int(k.request_timeout_s * 1000))
    return tracing.TracedProducer(producer) if tracing.active() else producer  # type: ignore[return-value]


async def _timed(step: Awaitable[Any]) -> tuple[Any, float]:
    """``step``'s result and the seconds it took (start-up steps log what they cost)."""
    began = asyncio.get_running_loop().time()
    result = await step
    return result, round(asyncio.get_running_loop().time() - began, 2)


async def exactly_once(settings: Settings) -> bool:
    """Whether this worker runs its streams in Kafka transactions: ``kafka.exactly_once`` and
    brokers that have them (one probe: an empty transaction). Said once, at start. A principal
    refused its transactional ids stops the worker with the ACL to grant."""
    from aiokafka.errors import TransactionalIdAuthorizationFailed

    from connector.kafka import KafkaAccessError, transactional_acl_problem
    from connector.streams.transactions import broker_supports_transactions

    k = settings.kafka
    if not k.exactly_once:
        log.info("at-least-once (kafka.exactly_once=false): a crash may repeat records, never lose one")
        return False
    try:
        supported = await broker_supports_transactions(k)
    except TransactionalIdAuthorizationFailed:
        raise KafkaAccessError(transactional_acl_problem(k)) from None
    if supported:
        log.info("exactly-once: records and offsets committed in Kafka transactions",
                 extra={"transactional_id_prefix": k.transactional_id_prefix})
    else:
        log.warning(f"at-least-once: the brokers at {k.bootstrap_servers} have no transactions (as the embedded dev "
                    f"broker Tansu); a crash may repeat records, never lose one. Exactly-once needs Apache Kafka; "
                    f"set kafka.exactly_once=false to skip this check")
    return supported


def _stopping(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("stopping", extra={"signal": sig.name})
    stop.set()


async def run_worker(settings: Settings, stop: asyncio.Event | None = None,
                     roles: frozenset[str] = frozenset({"dispatch"})) -> None:
    """Run the worker's roles until ``stop`` is set or SIGINT/SIGTERM arrives. A stop during
    start-up cancels it (``unless_stopped``): what it opened is closed and the worker stops at
    once, as after a normal run (exit 0), instead of finishing its start-up first."""
    from connector.streams.plumbing import stop_client, unless_stopped

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, _stopping, stop, sig)
        except (NotImplementedError, RuntimeError):
            pass
    log.info("worker starting", extra={"roles": sorted(roles)})
    # wrong password / untrusted CA: say so, exit
    _, refused = await unless_stopped(stop, access_problem(settings.kafka))
    if refused is not None:
        raise refused
    tracing.configure(settings.tracing)
    senders: dict[str, RouteSender] = {}
    checks: list[ReadyPart] = []
    jobs: list[Coroutine[Any, Any, None]] = []
    closers: list[Callable[[], Awaitable[Any]]] = []
    producer: AIOKafkaProducer | None = None

    async def start_up() -> Any:
        """Every role's start, up to the HTTP server (its runner); each closer is registered
        before the step that opens its client, so a cancelled step is closed too."""
        nonlocal producer
        eos = await exactly_once(settings)
        senders.update(build_senders(settings))
        if roles & {"callbacks", "pollers"}:
            from connector.streams.optouts import optout_sync
            from connector.streams.publish import InboundPublisher

            producer = inbound_producer(settings)
            await producer.start()
            syncs = [optout_sync(s) for s in senders.values()
                     if has(s.provider, Capability.OPTOUT_SYNC) and settings.inbound.optout_sync_revio]
            publisher = InboundPublisher(producer, syncs)
        web_app = make_app(lambda: _ready(checks))
        if "dispatch" in roles:
            from connector.streams.dispatch import Dispatcher
            from connector.streams.optouts import OptOutTable

            optouts = OptOutTable(settings.kafka)
            closers.append(optouts.stop)
            await optouts.start()
            router = Router.from_settings(settings.routing, {n: s.provider.name for n, s in senders.items()})
            dispatcher = Dispatcher(settings, senders, router, optouts, exactly_once=eos)

            async def dispatch_ready() -> tuple[bool, dict[str, object]]:
                reachable = await dispatcher.broker_reachable()
                return reachable and dispatcher.assigned > 0, {"broker_reachable": reachable,
                                                              "partitions_assigned": dispatcher.assigned}
            checks.append(dispatch_ready)
            jobs.append(dispatcher.run(stop))
        if "callbacks" in roles:
            from connector.streams.callbacks import CallbackReceiver, callback_transactions
            from connector.streams.correlator import Correlator

            group = callback_transactions(settings) if eos else None
            if group is not None:
                closers.append(group.stop)
            receiver = CallbackReceiver(settings, producer, publisher, transactions=group)  # type: ignore[arg-type]
            closers.append(receiver.aclose)
            t0 = loop.time()
            # Exactly-once: the replica's transactional ids initialised (a kill -9's open
            # transaction aborted) and the receipts already recorded remembered, both before the
            # first callback is answered.
            (_, ids_s), (remembered, remember_s) = await asyncio.gather(
                _timed(group.start() if group else asyncio.sleep(0)), _timed(receiver.remember_recent(settings.kafka)))
            log.info("callbacks ready", extra={"remembered_event_ids": remembered,
                                               "seconds": round(loop.time() - t0, 2),
                                               "transactional_ids_s": ids_s, "remember_s": remember_s})
            web_app.add_routes(receiver.routes())
            correlator = Correlator(settings, producer, senders, transactional=eos)  # type: ignore[arg-type]
            jobs.append(correlator.run(stop))

            async def callbacks_ready() -> tuple[bool, dict[str, object]]:
                return True, {"correlator_partitions": correlator.assigned}
            checks.append(callbacks_ready)
        if "pollers" in roles:
            from connector.streams.pollers import Pollers

            pollers = Pollers(settings, senders, producer, publisher, transactional=eos)  # type: ignore[arg-type]
            jobs.append(pollers.run(stop))

            async def pollers_ready() -> tuple[bool, dict[str, object]]:
                return bool(pollers.ready), {"pollers": "running" if pollers.ready else "starting"}
            checks.append(pollers_ready)
        tracing.instrument(web_app)
        return await serve(web_app, settings.http.host, settings.http.port)

    try:
        started, runner = await unless_stopped(stop, start_up())
        if not started:
            log.info("start-up cancelled: stopped before the worker started")
            return
        log.info("worker started", extra={"roles": sorted(roles), "host": settings.http.host,
                                          "port": settings.http.port})
        tune_gc()
        try:
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    log.error("a role stopped with an error", exc_info=r)
                    raise r
        finally:
            await runner.cleanup()
    finally:
        for job in jobs:     # a role's run that never began (start-up cancelled or failed): never awaited
            job.close()
        # what each close step cost, said once at exit (a stop must fit the grace period)
        t0, close_s = loop.time(), {}
        for close in reversed(closers):
            _, close_s[getattr(close, "__qualname__", "close")] = await _timed(close())
        for sender in senders.values():
            await sender.aclose()
            await sender.transport.aclose()
        if producer is not None:
            _, close_s["inbound_producer"] = await _timed(stop_client(producer))   # flushed: acknowledged
        tracing.shutdown()
        log.info("worker stopped", extra={"close_s": close_s, "seconds": round(loop.time() - t0, 2)})


async def _ready(checks: list[ReadyPart]) -> tuple[bool, dict[str, object]]:
    ok, details = True, {}
    for check in checks:
        part_ok, part = await check()
        ok = ok and part_ok
        details.update(part)
    return ok, details
