"""What happens to one outbound record, from its bytes to its terminal outcome. No Kafka: the
ledger is reached through ``MessageLedger`` (``streams.ledger.PartitionLedger`` implements it).

``Pipeline.outcome(value, timestamp_ms)`` decodes and validates the record, checks expiry,
chooses the route, applies the route's destination rules (``connector.destinations``) and smart
encoding (``encoding.smart_encode``), prepares the message for its provider and sends it
(retries included), and
returns the one ``Verdict`` that ends it: accepted, failed (with reason) or dead-lettered, or
``retry``: a hand-off to the retry topic (``connector.retries``) when the in-place retries of a
retriable error are spent and the attempt cap is not reached. ``Pipeline.outcomes`` makes the
same decisions for a wave of records (``streams/waves.py``), without per-message machinery for
the common case. The dispatch processor (``streams/dispatch.py``) turns outcomes into Kafka records; the contract tests
drive the same path against every simulator without a broker.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Container, Mapping, Optional, Protocol, Sequence, Union

from connector import metrics
from connector.breaker import CircuitOpen
from connector.budget import BudgetSpent, Charge
from connector.encoding import smart_encode
from connector.errors import (BlockedDestination, Expired, InDoubt, InvalidMessage, InvalidRecord, OptedOut,
                              OverBudget, SmsError, Timeout)
from connector.policy import (FAIL_BUDGET, HOLD_HAND_OFF, Fail, HandOffPolicy, Retry, decide, hand_off,
                              over_budget_action)
from connector.providers.base import Prepared, SendResult
from connector.records import (DONE, INTENT, RETRYING, Accepted, Ending, OutboundSms, SendFacts, correlation_key,
                               decode_outbound, encode_accepted, encode_correlation, encode_failed, iso)
from connector.retries import RetryState
from connector.schedule import SCHEDULED, SchedulePolicy
from connector.routing import Router
from connector.sender import OnCall, RouteSender
from connector.streams.membership import OwnershipLost



class MessageLedger(Protocol):
    """One partition's ledger as the pipeline needs it (states: ``records.INTENT`` /
    ``RETRYING`` / ``DONE``)."""

    def state(self, cid: str) -> str | None: ...

    def outcome(self, cid: str) -> str | None: ...

    def token(self, cid: str) -> str | None: ...

    async def intent(self, cid: str, route: str | None) -> None: ...


class SpendBudgets(Protocol):
    """The routes' spend budgets as the pipeline needs them (``streams.budgets.Budgets``)."""

    def applies(self, route: str) -> bool: ...

    async def charge(self, route: str, recipient: Any, segments: int) -> Charge | BudgetSpent | None: ...

    async def refund(self, charge: Charge) -> None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the pipeline decided for a record (``ending``). ``value`` is the terminal record (None
    for dead letters, which keep the input's bytes); ``reason`` is the failure or dead-letter reason."""

    ending: Ending
    value: bytes | None
    reason: str | None = None
    error: str | None = None
    field: str | None = None
    # accepted only: (key, value) records for sms.correlation, so receipts find this message
    correlations: tuple[tuple[bytes, bytes], ...] = ()
    # set when the ledger holds an intent for this message: record "done" once the terminal is durable
    ledger_cid: str | None = None
    # retry only: when and how the message is sent again from the retry topic
    handoff: RetryState | None = None
    # a hand-off that waits for the message's send time, not a retry: "scheduled" / "quiet-hours"
    deferral: str | None = None


SKIP = Verdict(Ending.SKIPPED, None)   # a replay whose outcome is recorded: nothing to send, nothing to publish


class Pipeline:
    def __init__(self, senders: Mapping[str, RouteSender], router: Router,
                 optouts: Container[str] = frozenset(), handoff: HandOffPolicy | None = None,
                 schedule: SchedulePolicy | None = None) -> None:
        """``handoff``: the retry topic's policy; None fails a message once its in-place retries
        are spent (no retry topic). ``schedule``: send_at and quiet hours (None: send_at only,
        no quiet hours)."""
        self.senders = senders
        self.router = router
        self.optouts = optouts
        self.handoff = handoff
        self.schedule = schedule if schedule is not None else SchedulePolicy({})
        self.budgets: SpendBudgets | None = None    # set by the dispatcher when a route has a budget

    async def outcome(self, value: bytes | None, timestamp_ms: int, ledger: MessageLedger | None = None,
                      replayed: bool = False, retry: RetryState | None = None) -> Verdict:
        """``replayed``: re-injected by ``dlq replay``; a message whose recorded outcome was failed
        is sent again (after a fix), one already accepted is still a no-op. ``retry``: the record
        comes from the retry topic (its earlier passes)."""
        try:
            msg = decode_outbound(value)
        except InvalidRecord as exc:
            return self.dead_letter(exc)
        return await self.outcome_of(msg, timestamp_ms, ledger, replayed, retry)

    async def outcome_of(self, msg: OutboundSms, timestamp_ms: int, ledger: MessageLedger | None = None,
                         replayed: bool = False, retry: RetryState | None = None) -> Verdict:
        """``outcome`` of a decoded message."""
        known = self._known(msg, ledger, replayed, retry)
        if known is SKIP:
            return SKIP
        o = SendFacts(msg=msg, received_at=timestamp_ms / 1000)
        try:
            sender, prepared, wait = self._ready(o)
        except InvalidMessage as exc:
            return self.failed(o, exc)
        if wait is not None:
            return self._defer(o, wait, ledger, retry)
        return await self._send(o, sender, prepared, known, ledger, retry)

    @staticmethod
    def _known(msg: OutboundSms, ledger: MessageLedger | None, replayed: bool,
               retry: RetryState | None) -> str | None | Verdict:
        """What the ledger says of ``msg`` for this pass: SKIP (its outcome or hand-off is
        recorded), INTENT (in doubt) or None (send it)."""
        known = ledger.state(msg.client_message_id) if ledger is not None else None
        if known == RETRYING:
            assert ledger is not None
            if retry is None or retry.token != ledger.token(msg.client_message_id):
                # its hand-off is durable: the original read again, a duplicate, or an older retry record
                metrics.LEDGER_REPLAYS.labels("retrying").inc()
                return SKIP
            known = None     # this pass is the one the ledger expects: a resend by design, not in doubt
        if known == DONE:
            if not (replayed and ledger is not None and ledger.outcome(msg.client_message_id) == "failed"):
                metrics.LEDGER_REPLAYS.labels("done").inc()
                return SKIP
            metrics.LEDGER_REPLAYS.labels("replayed-after-failure").inc()
            known = None
        return known

    def _ready(self, o: SendFacts) -> tuple[RouteSender, Prepared, tuple[float, str] | None]:
        """The checks before a send: route, expiry, opt-out, the route's rules, the message as its
        provider sends it, and when it may be sent (``_wait``). Raises InvalidMessage: no call."""
        msg = o.msg
        o.route = self.router.choose(msg)
        sender = self.senders[o.route]
        o.provider = sender.provider.name
        if msg.expires_at is not None and msg.expires_at <= time.time():
            raise Expired(f"expired at {iso(msg.expires_at)} before it could be sent", field="expires_at")
        # By canonical number: a STOP in any provider's form blocks every form of the number.
        e164 = msg.recipient.e164
        if e164 is not None and e164 in self.optouts:
            metrics.OPTOUT_SUPPRESSED.labels(o.route).inc()
            raise OptedOut("the recipient opted out (sms.optout); not sent", field="recipient")
        prepared = self._prepare(sender, o)
        return sender, prepared, self._wait(msg, o.route)

    async def _send(self, o: SendFacts, sender: RouteSender, prepared: Prepared, known: str | None,
                    ledger: MessageLedger | None, retry: RetryState | None,
                    first: tuple[SendResult, float] | None = None) -> Verdict:
        """Charge, intent, send (retries, failover) and the verdict. ``first``: the outcome of a
        first attempt made for a wave (``outcomes``: no budget, no intent needed)."""
        msg = o.msg
        earlier = retry.attempts if retry is not None else 0
        charge = await self._charge(o, retry, ledger)
        if isinstance(charge, Verdict):
            return charge
        cid = None
        has_intent = known == INTENT   # recorded now or before a crash: the route's in-doubt policy applies
        if ledger is not None:
            cid = msg.client_message_id
            if known == INTENT:
                if sender.in_doubt == "fail":
                    metrics.LEDGER_REPLAYS.labels("in-doubt-fail").inc()
                    return replace(self.failed(o, InDoubt(
                        "a previous attempt may have reached the provider (crash before its outcome was "
                        "recorded); route policy in_doubt=fail")), ledger_cid=cid)
                metrics.LEDGER_REPLAYS.labels("in-doubt-resend").inc()
            elif sender.in_doubt == "fail":
                # Only an at-most-once route needs the intent: under ``resend`` a message with an
                # intent and one without are both sent again on replay, so writing it (a produce
                # awaited before every call) would change nothing.
                await sender.await_gate()   # a worker that lost the partition leaves no intent behind
                await ledger.intent(cid, o.route)
                has_intent = True
        budget = self.handoff.max_attempts - earlier if self.handoff is not None else None
        sent = await sender.send(prepared, budget=budget, first=first)
        if isinstance(sent.result, CircuitOpen) and sender.failover_route:
            # The route's circuit is open: its failover takes the message (one hop, never back).
            metrics.FAILOVER.labels(o.route, sender.failover_route).inc()
            o.route = sender.failover_route
            sender = self.senders[o.route]
            o.provider = sender.provider.name
            try:
                prepared = self._prepare(sender, o)    # the failover route's own rules apply
            except InvalidMessage as exc:
                return self.failed(o, exc)
            if charge is not None and self.budgets is not None:
                await self.budgets.refund(charge)     # the first route made no call: its budget is not spent
            charge = await self._charge(o, retry, ledger)    # the failover route's budget is
            if isinstance(charge, Verdict):
                return charge
            if ledger is not None and not has_intent and sender.in_doubt == "fail":
                await ledger.intent(msg.client_message_id, o.route)   # the failover route is at-most-once
            before_failover = sent.attempts
            sent = await sender.send(prepared, may_fail_over=False,
                                     budget=budget - before_failover if budget is not None else None)
            sent.attempts += before_failover
        o.attempts, o.submitted_at = earlier + sent.attempts, sent.submitted_at
        if charge is not None and not isinstance(sent.result, (Accepted, Timeout, InDoubt)) and self.budgets:
            await self.budgets.refund(charge)   # the provider surely did not take it: not spent
        if isinstance(sent.result, Accepted):
            value, correlations = self._accepted(o, sent.result)
            return Verdict(Ending.ACCEPTED, value, correlations=correlations, ledger_cid=cid)
        return self._not_sent(o, sent.result, cid, retry)

    def _accepted(self, o: SendFacts, accepted: Accepted) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
        """An accepted message's record and correlation records (``o.attempts`` and ``submitted_at`` set)."""
        if o.original_segments is not None and o.segments is not None:
            metrics.SMART_ENCODED.labels(o.route).inc()
            metrics.SEGMENTS_SAVED.labels(o.route).inc(max(0, o.original_segments - o.segments))
        return encode_accepted(o, accepted, time.time()), _correlations(o, accepted)

    def _not_sent(self, o: SendFacts, error: SmsError, cid: str | None, retry: RetryState | None) -> Verdict:
        """A message whose sending ended in ``error``: handed off to the retry topic, or failed."""
        if self.handoff is not None:
            passes = retry.passes if retry is not None else 0
            action = hand_off(error, o.attempts, passes, self.handoff)
            if isinstance(action, Retry):
                metrics.HANDED_OFF.labels(o.route, error.reason).inc()
                return Verdict(Ending.HANDED_OFF, None, error.reason, error.message, ledger_cid=cid,
                               handoff=RetryState.new(o.attempts, passes + 1, time.time() + action.after_s))
        return replace(self.failed(o, error), ledger_cid=cid)

    # -- a wave: many messages of one partition, one per key (streams.waves) ----------------
    async def outcomes(self, msgs: Sequence[OutboundSms | InvalidRecord], timestamps_ms: Sequence[int],
                       ledger: MessageLedger | None = None,
                       on_ends: Callable[[list[tuple[int, WaveEnd]]], None] | None = None) -> list[WaveEnd]:
        """``outcome`` for many input records at once (none from the retry topic or replayed), the
        same decisions, aligned by index. The common case is decided here without a coroutine,
        future or ``Verdict`` per message: one first attempt for every message of a route in
        ``RouteSender.send_many``, and an accepted message ends as a tuple (its record, its
        correlation records, its ledger client_message_id or None). A message that ends otherwise
        before or after that attempt (invalid, failed, deferred, handed off, skipped) ends as a
        ``Verdict``. One that needs more (a ledger entry to judge, a budget, an intent, a circuit not
        closed, an in-place retry, a failover) is a ``Later``: awaiting ``later()`` runs the rest of
        ``outcome`` for it. ``OwnershipLost``: its call was refused, nothing sent. Any other
        exception: a bug met by that message alone (the dispatcher dead-letters it).

        ``on_ends((index, end) pairs)`` is told as soon as messages are decided: those decided
        before any call, then the messages of each call as it returns (so what a call sent can be
        recorded while the wave's other calls are under way)."""
        ends: list[WaveEnd] = [None] * len(msgs)  # type: ignore[list-item]
        facts: list[SendFacts | None] = [None] * len(msgs)
        calls: dict[RouteSender, tuple[list[int], list[Prepared]]] = {}
        budgets = self.budgets
        decided: list[int] = []
        for i, msg in enumerate(msgs):
            if isinstance(msg, InvalidRecord):
                ends[i] = self.dead_letter(msg)
                decided.append(i)
                continue
            try:
                known = self._known(msg, ledger, False, None) if ledger is not None else None
                if known is SKIP:
                    ends[i] = SKIP
                    decided.append(i)
                    continue
                o = SendFacts(msg=msg, received_at=timestamps_ms[i] / 1000)
                try:
                    sender, prepared, wait = self._ready(o)
                except InvalidMessage as exc:
                    ends[i] = self.failed(o, exc)
                    decided.append(i)
                    continue
                if wait is not None:
                    ends[i] = self._defer(o, wait, ledger, None)
                elif (known is not None or not sender.closed
                      or (budgets is not None and budgets.applies(o.route or ""))
                      or (ledger is not None and sender.in_doubt == "fail")):
                    ends[i] = Later(self._send, o, sender, prepared, known, ledger, None)
                else:
                    facts[i] = o
                    call = calls.get(sender)
                    if call is None:
                        call = calls[sender] = ([], [])
                    call[0].append(i)
                    call[1].append(prepared)
                    continue
            except Exception as exc:  # noqa: BLE001 - a bug ends this message only
                ends[i] = exc
            decided.append(i)
        if on_ends is not None and decided:
            on_ends([(i, ends[i]) for i in decided])
        if not calls:
            return ends
        stop_after_one = self.handoff is not None and self.handoff.max_attempts <= 1

        def after(sender: RouteSender, idxs: list[int], prepared_list: list[Prepared]) -> OnCall:
            def call_returned(lo: int, hi: int, results: list[Any], started: list[float]) -> None:
                for k in range(lo, hi):
                    i, result, o = idxs[k], results[k], facts[idxs[k]]
                    assert o is not None
                    try:
                        cid = o.msg.client_message_id if ledger is not None else None
                        if isinstance(result, Accepted):
                            o.attempts, o.submitted_at = 1, started[k]
                            value, correlations = self._accepted(o, result)
                            ends[i] = (value, correlations, cid)
                        elif isinstance(result, OwnershipLost):
                            ends[i] = result
                        elif result is None:     # not sent: the circuit opened meanwhile
                            ends[i] = Later(self._send, o, sender, prepared_list[k], None, ledger, None)
                        elif stop_after_one or isinstance(decide(result, 1, sender.retry), Fail):
                            o.attempts, o.submitted_at = 1, started[k]    # what sender.send would end with
                            ends[i] = self._not_sent(o, result, cid, None)
                        else:     # an in-place retry: the rest of outcome, from this first attempt
                            ends[i] = Later(self._send, o, sender, prepared_list[k], None, ledger, None,
                                            (result, started[k]))
                    except Exception as exc:  # noqa: BLE001 - a bug ends this message only
                        ends[i] = exc
                if on_ends is not None:
                    on_ends([(idxs[k], ends[idxs[k]]) for k in range(lo, hi)])
            return call_returned

        sends = [s.send_many(call[1], after(s, *call)) for s, call in calls.items()]
        if len(sends) == 1:
            await sends[0]
        else:
            await asyncio.gather(*sends)
        return ends

    # -- scheduled sends and quiet hours (connector.schedule) --------------------------------
    def _wait(self, msg: OutboundSms, route: str | None) -> tuple[float, str] | None:
        """When the message must wait (due_at, reason), checked against its expiry and the
        furthest allowed schedule (Expired / InvalidMessage); None: send now."""
        now = time.time()
        wait = self.schedule.wait(msg, route, now)
        if wait is None:
            return None
        due_at, why = wait
        if msg.expires_at is not None and msg.expires_at <= due_at:
            raise Expired(f"expires at {iso(msg.expires_at)}, before it may be sent ({why} until {iso(due_at)})",
                          field="expires_at")
        if due_at - now > self.schedule.max_ahead_s:
            raise InvalidMessage(f"may not be sent before {iso(due_at)} ({why}), more than "
                                 f"dispatch.max_schedule_ahead_s ({self.schedule.max_ahead_s:g} s) ahead",
                                 field="send_at" if why == SCHEDULED else None)
        return wait

    @staticmethod
    def _defer(o: SendFacts, wait: tuple[float, str], ledger: MessageLedger | None,
               retry: RetryState | None) -> Verdict:
        """Hand the message off until its due time (``streams.scheduled``), keeping its retry count.
        The due time is rounded up to the millisecond of the retry headers: never early."""
        due_at, why = wait
        metrics.DEFERRED.labels(o.route or "", why).inc()
        state = RetryState.new(retry.attempts if retry is not None else 0, retry.passes if retry is not None else 0,
                               math.ceil(due_at * 1000) / 1000)
        return Verdict(Ending.HANDED_OFF, None, why, f"waits until {iso(due_at)} ({why})", handoff=state,
                       deferral=why, ledger_cid=o.msg.client_message_id if ledger is not None else None)

    @staticmethod
    def _prepare(sender: RouteSender, o: SendFacts) -> Prepared:
        """The message as ``sender``'s provider will send it, after the route's destination rules
        and smart encoding (``o``'s encoding and segments are set, and the original's when the
        text was rewritten). Raises InvalidMessage (``BlockedDestination`` included): no call."""
        msg = o.msg
        sender.destinations.check_recipient(msg.recipient, sender.provider.number_check, o.route or "")
        smart = smart_encode(msg.text) if sender.smart_encoding else None
        if smart is None:
            prepared = sender.provider.prepare(msg)
            o.original_encoding = o.original_segments = None
        else:
            prepared = sender.provider.prepare(replace(msg, text=smart.text))
            o.original_encoding, o.original_segments = smart.original.encoding.value, smart.original.segments
        o.encoding, o.segments = prepared.encoded.encoding.value, prepared.segments
        return prepared
    async def _charge(self, o: SendFacts, retry: RetryState | None, ledger: MessageLedger | None) -> Charge | Verdict | None:
        """Charge the message to its route's budgets (``connector.budget``) before its call: the
        charge, None (no budget), or the verdict of a message over budget. Held in place (no
        retry topic), it waits here for the window's end."""
        if self.budgets is None or not self.budgets.applies(o.route or ""):
            return None
        while isinstance(taken := await self.budgets.charge(o.route or "", o.msg.recipient, o.segments), BudgetSpent):
            held = self._over_budget(o, taken, retry, ledger)
            if held is not None:
                return held
            await asyncio.sleep(max(0.0, taken.until - time.time()) + 0.01)
            expires_at = o.msg.expires_at
            if expires_at is not None and expires_at <= time.time():
                return self.failed(o, Expired(f"expired at {iso(expires_at)} while held over budget",
                                              field="expires_at"))
        return taken

    def _over_budget(self, o: SendFacts, spent: BudgetSpent, retry: RetryState | None,
                     ledger: MessageLedger | None) -> Verdict | None:
        """A message over a spent budget: failed, handed off until the window ends, or None
        (wait in place: there is no retry topic)."""
        limit = spent.limit
        what = f"route {o.route}: budget of {limit.segments} segments per {limit.window}" + (
            f" for region {limit.scope}" if limit.scope else "") + " spent"
        action = over_budget_action(spent.over_budget, self.handoff is not None)
        cid = o.msg.client_message_id if ledger is not None else None
        if action == FAIL_BUDGET:
            # recorded as done: a replayed input is not judged again (``dlq replay`` after a raise still is)
            return replace(self.failed(o, OverBudget(what)), ledger_cid=cid)
        metrics.BUDGET_HELD.labels(o.route or "").inc()
        if action != HOLD_HAND_OFF:
            return None
        passes = retry.passes if retry is not None else 0
        attempts = retry.attempts if retry is not None else 0
        return Verdict(Ending.HANDED_OFF, None, "budget", f"{what}; held until {iso(spent.until)}",
                       ledger_cid=cid, handoff=RetryState.new(attempts, passes, spent.until))

    @staticmethod
    def failed(o: SendFacts, exc: SmsError) -> Verdict:
        metrics.FAILED.labels(o.route or "", o.provider or "", exc.reason).inc()
        if isinstance(exc, BlockedDestination):
            metrics.BLOCKED.labels(o.route or "", exc.rule).inc()
        value = encode_failed(o, exc.reason, exc.message, time.time(), provider_code=exc.code,
                              provider_text=exc.text)
        return Verdict(Ending.FAILED, value, exc.reason, exc.message)

    @staticmethod
    def dead_letter(exc: InvalidRecord) -> Verdict:
        metrics.DEAD_LETTERED.labels(exc.reason).inc()
        return Verdict(Ending.DEAD_LETTERED, None, exc.reason, exc.message, exc.field)

    @staticmethod
    def internal_error(exc: BaseException) -> Verdict:
        metrics.DEAD_LETTERED.labels("internal").inc()
        return Verdict(Ending.DEAD_LETTERED, None, "internal", f"internal error: {type(exc).__name__}")


def _correlations(o: SendFacts, accepted: Accepted) -> tuple[tuple[bytes, bytes], ...]:
    ids = accepted.provider_request_id or accepted.provider_message_id
    if not ids or o.provider is None:
        return ()
    msg = o.msg
    value = encode_correlation(
        msg.client_message_id, o.provider, o.route, msg.recipient.as_json(), msg.metadata,
        accepted.provider_message_id, accepted.provider_request_id,
        iso(o.submitted_at if o.submitted_at is not None else time.time()),
        iso(msg.expires_at) if msg.expires_at is not None else None)
    # Split messages carry one id per part ("id1,id2"): a receipt for any part finds the message.
    return tuple((correlation_key(o.provider, i).encode(), value) for i in ids.split(",") if i)


class Later:
    """The rest of one message's ``outcome``, to run on its own (``Pipeline.outcomes``):
    ``await later()``."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Awaitable[Verdict]], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __call__(self) -> Awaitable[Verdict]:
        return self.fn(*self.args)


# how a message of a wave ended (``Pipeline.outcomes``): accepted (record, correlations, ledger cid),
# any other verdict, the rest to run on its own, or the exception that stopped it
WaveEnd = Union[tuple[bytes, tuple[tuple[bytes, bytes], ...], Optional[str]], Verdict, Later, BaseException]
