"""Opt-out / opt-in keyword detection for MO messages (STOP, START, ...): what an inbound text
means, not a record type (those are in ``connector.records``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

DEFAULT_STOP_WORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")
DEFAULT_START_WORDS = ("START", "UNSTOP")

_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Keywords:
    """Opt-out / opt-in keywords (configurable); matched on the whole text, case-insensitive."""

    stop: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_STOP_WORDS))
    start: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_START_WORDS))

    @classmethod
    def parse(cls, stop: Iterable[str] | str, start: Iterable[str] | str) -> Keywords:
        def words(v: Iterable[str] | str) -> frozenset[str]:
            items = v.split(",") if isinstance(v, str) else v
            return frozenset(w.strip().upper() for w in items if w.strip())
        return cls(words(stop), words(start))

    def classify(self, text: str) -> str | None:
        """``stop``, ``start`` or None: the text must be the keyword alone (punctuation allowed),
        as carriers do, so 'please stop by' does not opt anyone out."""
        words = _WORD.findall(text or "")
        if len(words) != 1:
            return None
        word = words[0].upper()
        if word in self.stop:
            return "stop"
        if word in self.start:
            return "start"
        return None


def first_word(text: str) -> str | None:
    m = _WORD.search(text or "")
    return m.group(0).upper() if m else None
