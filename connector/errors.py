"""Every error the connector classifies, each one saying whether a retry can help.

Provider adapters raise these from ``parse_*`` functions; the transport raises the network ones;
``connector.policy`` is the only place that turns them into an action (retry, fail, dead-letter).

    SmsError
    ├── InvalidRecord        input that is not an OutboundSms (undecodable, schema) -> dead letter
    ├── InvalidMessage       a well-formed message that cannot be sent as given -> failed/invalid
    │   ├── OptedOut         the recipient opted out                           -> failed/opted-out
    │   ├── Expired          past its expiry before it could be sent            -> failed/expired
    │   ├── BlockedDestination  the route's destination rules refuse the recipient -> failed/blocked-destination
    │   └── OverBudget       the route's spend budget is spent (over_budget=fail) -> failed/budget
    └── ProviderError        a provider call went wrong
        ├── Retriable        network errors, timeouts, 408, 425, 5xx
        │   ├── Timeout
        │   └── Throttled    429 or a provider's rate-limit answer (carries retry_after)
        ├── AuthFailed       credentials or session refused (refresh once, then fail)
        │   └── LoginLocked  logins failing: the login breaker is open, no login is attempted
        ├── Rejected         the provider refused this message permanently
        └── InDoubt          the call may have been carried out; we cannot know
"""

from __future__ import annotations


class SmsError(Exception):
    """Base of every classified error. ``retriable`` says whether trying again can help."""

    retriable: bool = False
    reason: str = "rejected"

    def __init__(self, message: str, *, code: str | None = None, text: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code          # the provider's own error code, when it gave one
        self.text = text          # the provider's own error text
        self.field = field        # the input field at fault (records / validation)


class InvalidRecord(SmsError):
    """The input is not an OutboundSms: it cannot be decoded or does not match the schema."""

    reason = "invalid-record"


class InvalidMessage(SmsError):
    """The message is well formed but cannot be sent as given (bad number, too long, no route)."""

    reason = "invalid"


class OptedOut(InvalidMessage):
    reason = "opted-out"


class Expired(InvalidMessage):
    reason = "expired"


class BlockedDestination(InvalidMessage):
    """The route's destination rules (regions, number types) refuse the recipient: no call.
    ``rule`` is the route setting that refused it (``block_regions``, ``allow_number_types``, ...)."""

    reason = "blocked-destination"

    def __init__(self, message: str, *, rule: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.rule = rule


class ProviderError(SmsError):
    """A provider call failed."""


class Retriable(ProviderError):
    retriable = True
    reason = "unavailable"


class Timeout(Retriable):
    pass


class Throttled(Retriable):
    """Rate-limited. ``retry_after`` (seconds) is the provider's hint, when it gave one."""

    reason = "throttled"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class AuthFailed(ProviderError):
    reason = "auth"


class LoginLocked(AuthFailed):
    """Logins have been failing: no new login is attempted until the breaker's cool-down ends."""


class Rejected(ProviderError):
    reason = "rejected"


class OverBudget(InvalidMessage):
    """A route's spend budget (connector.budget) has no room left in its window; no call made."""
    reason = "budget"


class InDoubt(ProviderError):
    reason = "in-doubt"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    import time

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def for_http_status(status: int, message: str, *, code: str | None = None,
                    text: str | None = None, retry_after: str | None = None) -> ProviderError:
    """The classified error for a provider's HTTP error status (no provider-specific meaning)."""
    if status == 429:
        return Throttled(message, retry_after=parse_retry_after(retry_after), code=code, text=text)
    if status in (408, 425) or status >= 500:
        return Retriable(message, code=code, text=text)
    if status in (401, 403):
        return AuthFailed(message, code=code, text=text)
    return Rejected(message, code=code, text=text)
