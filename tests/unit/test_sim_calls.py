"""The SMPP REST simulator's call log (``GET /_sim/calls``): every message of every call, the faulted
ones included, so a test can tell which messages were called how often (test_retry_topic's kill test
accounts for every call per message with it)."""

from __future__ import annotations

import aiohttp
import orjson

from connector.devtools.simulators.base import serve
from connector.devtools.simulators.smpp_rest import PATH, SmppRestSimulator


async def test_the_call_log_names_each_message_of_each_call_with_its_outcome() -> None:
    sim = SmppRestSimulator()
    runner = await serve(sim, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    auth = {"Authorization": f"Bearer {sim.credentials['api_key']}"}

    def body(*cids: str, to: str = "14155550101") -> bytes:
        return orjson.dumps({"Messages": [{"channel": "x", "to": to, "content": "hi", "clientMessageId": c}
                                          for c in cids]})
    try:
        async with aiohttp.ClientSession() as s:
            async with s.put(url + "/_sim/faults", data=orjson.dumps({"error_rate": 1.0})) as r:
                r.raise_for_status()
            async with s.post(url + PATH, data=body("a", "b"), headers=auth) as r:
                assert r.status == 503
            async with s.put(url + "/_sim/faults", data=orjson.dumps({"error_rate": 0.0})) as r:
                r.raise_for_status()
            async with s.post(url + PATH, data=body("a"), headers=auth) as r:
                assert r.status == 200
            async with s.post(url + PATH, data=body("c", to="14155550666"), headers=auth) as r:
                assert r.status == 200
            async with s.get(url + "/_sim/calls") as r:
                calls = orjson.loads(await r.read())
    finally:
        await runner.cleanup()
    assert [(cid, outcome) for _, cid, outcome in calls] == [
        ("a", "error"), ("b", "error"), ("a", "accepted"), ("c", "rejected")]
    times = [t for t, _, _ in calls]
    assert times == sorted(times)
