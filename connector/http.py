"""HTTP values exchanged between provider adapters (sans-IO) and the transport (I/O).

Adapters build ``HttpRequest`` and parse ``HttpResponse``: plain frozen values, cheap to make
(a few hundred nanoseconds, against ~50 µs for an ``httpx.Request``; see the README's
performance section for the measurement that chose this).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    # repr=False: headers and body carry credentials (bearer keys, SOAP passwords).
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)   # keys lower-case

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")
