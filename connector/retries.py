"""The retry topic's record: an outbound message handed off for a later pass, as headers.

A message whose in-place retries are spent (``connector.policy.hand_off``) is written to
``sms.outbound.retry`` with its original key, value, headers and timestamp, plus:

- ``sms.retry.attempts``: provider calls made so far, in all passes;
- ``sms.retry.passes``: hand-offs so far (1 on the first retry record);
- ``sms.retry.due-at``: epoch milliseconds before which it is not sent again;
- ``sms.retry.token``: this hand-off's id. The ledger records it, so a replayed older retry
  record of the same message (a crash between hand-off and commit) is recognised and skipped;
- ``sms.retry.reason``: the error that caused the hand-off (for operators);
- ``sms.source.*``: where the message was first read, kept through every pass so its terminal
  record names the original input.

Pure values: no Kafka, no clock. One ``RetryState``: ``from_headers`` reads what ``headers`` writes
(``due_at`` is exact when made by ``new``, to the millisecond when read back from headers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from connector import contract as topics

Headers = list[tuple[str, bytes]]

RETRY_HEADERS = frozenset({topics.HEADER_RETRY_ATTEMPTS, topics.HEADER_RETRY_PASSES, topics.HEADER_RETRY_DUE_AT,
                           topics.HEADER_RETRY_TOKEN, topics.HEADER_RETRY_REASON})
SOURCE_HEADERS = frozenset({topics.HEADER_SOURCE_TOPIC, topics.HEADER_SOURCE_PARTITION, topics.HEADER_SOURCE_OFFSET})


@dataclass(frozen=True, slots=True)
class RetryState:
    """A message's retry state: the hand-off a pass ends with (``new``, written by ``headers``)
    and what a retry record says about its earlier passes (``from_headers``), one value."""

    attempts: int        # provider calls made in all passes
    passes: int          # hand-offs so far, including the latest
    due_at: float        # epoch seconds (milliseconds on the wire)
    token: str           # random: tells this hand-off's retry record from a replayed older one

    @staticmethod
    def new(attempts: int, passes: int, due_at: float) -> RetryState:
        """A new hand-off: send the message again from the retry topic at ``due_at``."""
        return RetryState(attempts, passes, due_at, os.urandom(8).hex())

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]] | None) -> RetryState | None:
        """The retry state carried by a record's headers; None for a record never handed off (or
        one whose retry headers are unreadable: it is then treated as a first pass)."""
        found = {k: v for k, v in headers or () if k in RETRY_HEADERS}
        if topics.HEADER_RETRY_TOKEN not in found:
            return None
        try:
            return cls(attempts=int(found[topics.HEADER_RETRY_ATTEMPTS]),
                       passes=int(found[topics.HEADER_RETRY_PASSES]),
                       due_at=int(found[topics.HEADER_RETRY_DUE_AT]) / 1000,
                       token=found[topics.HEADER_RETRY_TOKEN].decode())
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def headers(self, original: Sequence[tuple[str, bytes]] | None, source: Headers, reason: str) -> Headers:
        """Headers of the retry record: the original ones (earlier retry and source headers
        replaced), the message's first source, and this hand-off (read back by ``from_headers``)."""
        kept = [(k, v) for k, v in original or () if k not in RETRY_HEADERS and k not in SOURCE_HEADERS]
        return kept + source + [
            (topics.HEADER_RETRY_ATTEMPTS, str(self.attempts).encode()),
            (topics.HEADER_RETRY_PASSES, str(self.passes).encode()),
            (topics.HEADER_RETRY_DUE_AT, str(int(self.due_at * 1000)).encode()),
            (topics.HEADER_RETRY_TOKEN, self.token.encode()),
            (topics.HEADER_RETRY_REASON, reason.encode()),
        ]


def carried_source(headers: Sequence[tuple[str, bytes]] | None) -> Headers:
    """The ``sms.source.*`` headers a retry record carries (its message's first input)."""
    return [(k, v) for k, v in headers or () if k in SOURCE_HEADERS]
