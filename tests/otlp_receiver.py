"""A real OTLP/HTTP trace receiver on loopback (protobuf, as the OpenTelemetry exporter sends it):
``POST /v1/traces`` decoded with the OpenTelemetry protocol's own messages; spans kept in memory
as plain dicts (hex ids, attributes as Python values) for tests to inspect."""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1/traces"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.content_type == "application/x-protobuf", request.content_type
        export = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for rs in export.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append({
                        "name": s.name, "kind": KINDS.get(s.kind, str(s.kind)),
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(), "status": s.status.code,
                        "attributes": {a.key: _value(a.value) for a in s.attributes},
                        "links": [{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex(),
                                   "attributes": {a.key: _value(a.value) for a in ln.attributes}} for ln in s.links],
                        "resource": resource, "scope": ss.scope.name})
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Spans matching ``predicate`` once there is at least one (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            await asyncio.sleep(0.2)
        raise AssertionError(f"no matching span within {timeout:.0f}s; got {[s['name'] for s in self.spans]}")
