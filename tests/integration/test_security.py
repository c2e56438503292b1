"""SASL_SSL (SCRAM-SHA-512) and authorization on Apache Kafka, as production runs them.

One broker for this module: SASL_SSL only, a CA and certificate made for the test, the standard
authorizer, and users created at format time: the connector's user (named as the chart's
KafkaUser) holding exactly the ACLs the chart's KafkaUser grants, and a user missing one of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import sys
import time
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from connector import contract as topics
from connector.cli import main as cli
from connector.config import KafkaSettings
from connector.devtools.bench import GroupWatch, end_offsets
from connector.devtools.kafka_broker import Acl, KafkaCluster, grant
from connector.devtools.stack import Follower, LocalStack, kafka_env, produce
from connector.kafka import apply_topics
from tests.conftest import session_cluster
from tests.integration.helpers import many, outbound, phone, until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PASSWORD = "connector-password"


def chart_user() -> tuple[str, str, list[Acl]]:
    """(user name, consumer group, ACLs) of the chart's KafkaUser in the `full` scenario (SCRAM-SHA-512)."""
    from tests.helm.test_chart import rendered

    r = rendered("full")
    user = r.of("KafkaUser")[0]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    acls = [Acl(a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], op)
            for a in user["spec"]["authorization"]["acls"] for op in a["operations"]]
    return user["metadata"]["name"], r.configmap["data"]["SMS_CONNECTOR_KAFKA__GROUP_ID"], acls


USER, GROUP, ACLS = chart_user()
PARTIAL = "partial"    # the chart's ACLs but those on sms.delivery (Read and Write imply Describe)
PARTIAL_LACKS = topics.spec("delivery").name
NO_TXN = "no-txn"      # the chart's ACLs but the transactional ids' (exactly-once, #16)


def run_async(coro: Any) -> Any:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def secure(request: pytest.FixtureRequest) -> Iterator[KafkaCluster]:
    for cluster in session_cluster(request, security="sasl_ssl",
                                   users={USER: PASSWORD, PARTIAL: PASSWORD, NO_TXN: PASSWORD}):
        admin = cluster.settings()

        async def grant_all() -> None:   # at once: each grant opens a TLS + SCRAM connection
            await asyncio.gather(
                grant(admin, f"User:{USER}", ACLS),
                grant(admin, f"User:{PARTIAL}", [a for a in ACLS if a.name != PARTIAL_LACKS]),
                grant(admin, f"User:{NO_TXN}", [a for a in ACLS if a.resource_type != "transactionalId"]))

        run_async(grant_all())
        yield cluster


@pytest.fixture(scope="module")
def secure_topics(secure: KafkaCluster) -> None:
    """Every topic of the contract on the secure broker, created by the admin once (in-process: the
    roles test runs ``topics apply`` itself, as an operator does; the others only need the topics)."""
    run_async(apply_topics(secure.settings()))


def cli_env(cluster: KafkaCluster, user: str = USER, **overrides: str) -> dict[str, str]:
    env = kafka_env(cluster.settings(user, group_id=GROUP))
    env.update({f"SMS_CONNECTOR_KAFKA__{k.upper()}": v for k, v in overrides.items()})
    return env


def invoke(*args: str, env: dict[str, str]) -> Any:
    """The CLI in-process, with only ``env``'s SMS_CONNECTOR_* settings."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SMS_CONNECTOR_")}
    return CliRunner().invoke(cli, list(args), env={**unset, **env}, catch_exceptions=False)


async def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """The CLI as a process (a worker must exit by itself: its exit code and output)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "connector.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, **env})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -9, out.decode(errors="replace")
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_every_role_and_tool_works_over_sasl_ssl_with_the_charts_acls(secure: KafkaCluster) -> None:
    admin_env = kafka_env(secure.settings())
    stack = LocalStack(broker=secure, owns_broker=False, group_id=GROUP)
    try:
        (code, out), *_ = await asyncio.gather(   # the simulators start while the admin creates the topics
            run_cli("topics", "apply", env=admin_env),
            *(stack.start_simulator(n) for n in ("smpp_rest", "revio", "ogangi", "thingspace")))
        assert code == 0, out
        worker = await stack.start_worker(env=cli_env(secure), roles=("all",))
        ids = [f"sec-{i}" for i in range(40)]
        async with Follower(stack.kafka) as f:   # the admin reads the results
            await produce(stack.kafka, [outbound(cid, phone(i)) for i, cid in enumerate(ids)])
            assert await f.wait_for(ids, timeout=90), f.tally.missing(ids)
        assert worker.alive
        assert f.tally.duplicates(ids) == 0

        result = await asyncio.to_thread(invoke, "check", "--connect", "--no-settings",
                                         env={**cli_env(secure), **worker_routes(stack)})
        assert result.exit_code == 0, result.output
        result = await asyncio.to_thread(invoke, "status", "--metrics-url", worker.url + "/metrics", "--once",
                                         "--interval", "0.2", env=cli_env(secure))
        assert result.exit_code == 0, result.output
        assert GROUP in result.output and "Consumer lag" in result.output
        # dlq replay writes sms.outbound, an input the connector's user only reads: an operator's job
        result = await asyncio.to_thread(invoke, "dlq", "replay", "--topic", "dlq", "--dry-run", env=admin_env)
        assert result.exit_code == 0, result.output
        assert "scanned 0" in result.output
    finally:
        await stack.stop()
    log = worker.log.read_text(errors="replace") if worker.log else ""
    assert not re.search(r"(?i)authori[sz]ation|not authorized|AccessDenied", log), log[-3000:]


def worker_routes(stack: LocalStack) -> dict[str, str]:
    from connector.devtools.stack import worker_env

    return {k: v for k, v in worker_env(stack.kafka, stack.sim_urls, 0).items() if not k.startswith("SMS_CONNECTOR_KAFKA__")}


@pytest.mark.parametrize("wrong,setting", [({"sasl_password": "not-the-password"}, "kafka.sasl_password"),
                                           ({"ssl_cafile": "OTHER_CA"}, "kafka.ssl_cafile")])
async def test_a_wrong_password_or_an_untrusted_certificate_is_one_clear_line_and_the_worker_exits(
        secure: KafkaCluster, wrong: dict[str, str], setting: str) -> None:
    wrong = {k: (str(secure.certificates["other_ca"]) if v == "OTHER_CA" else v) for k, v in wrong.items()}
    env = {**cli_env(secure, **wrong), "SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest",
           "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": "http://127.0.0.1:9", "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "k",
           "SMS_CONNECTOR_HTTP__PORT": "0"}
    all_roles = (("--role", "dispatch"), ("--role", "all"))
    result, *runs = await asyncio.gather(   # independent: at once
        asyncio.to_thread(invoke, "check", "--connect", "--no-settings", "--timeout", "10", env=env),
        *(run_cli("worker", *roles, env=env, timeout=90) for roles in all_roles))
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL") and " kafka " in line]
    assert len(failed) == 1 and setting in failed[0], result.output

    for roles, (code, out) in zip(all_roles, runs):
        assert code not in (0, -9), f"worker {roles}: exit {code}\n{out[-3000:]}"
        errors = [line for line in out.splitlines() if setting in line]
        assert errors, f"no line names {setting}:\n{out[-3000:]}"
        assert "Traceback" not in out, out[-3000:]


@pytest.mark.usefixtures("secure_topics")
async def test_a_missing_acl_is_named_by_check_connect_and_topics_check(secure: KafkaCluster) -> None:
    env = {**cli_env(secure, PARTIAL), "SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest",
           "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": "http://127.0.0.1:9", "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "k"}
    result = await asyncio.to_thread(invoke, "check", "--connect", "--no-settings", "--timeout", "10", env=env)
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL") and "route" not in line]
    assert len(failed) == 1, result.output
    assert PARTIAL_LACKS in failed[0] and "not authorized" in failed[0] and "KafkaUser" in failed[0], result.output
    result = await asyncio.to_thread(invoke, "topics", "check", env=env)
    assert result.exit_code != 0 and re.search(rf"FAIL\s+{re.escape(PARTIAL_LACKS)}\s+not authorized", result.output), \
        result.output


@pytest.mark.usefixtures("secure_topics")
async def test_transactional_ids_not_granted_are_one_line_naming_the_acl(secure: KafkaCluster) -> None:
    """Exactly-once (#16): a principal without the chart's TransactionalId ACL. ``check --connect``
    fails one row that names the ACL to grant, and the worker exits with that line (no traceback).
    Every other check passes: the chart's other ACLs are there."""
    assert any(a.resource_type == "transactionalId" for a in ACLS), "the chart grants the transactional ids"
    env = {**cli_env(secure, NO_TXN), "SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest",
           "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": "http://127.0.0.1:9", "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "k",
           "SMS_CONNECTOR_HTTP__PORT": "0"}
    result = await asyncio.to_thread(invoke, "check", "--connect", "--no-settings", "--timeout", "10", env=env)
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL") and "route" not in line]
    assert len(failed) == 1, result.output
    assert "TransactionalId prefix 'sms-connector-'" in failed[0] and "Write and Describe" in failed[0], result.output
    result = await asyncio.to_thread(invoke, "check", "--connect", "--no-settings", "--timeout", "10",
                                     env={**cli_env(secure), **{k: v for k, v in env.items() if "ROUTES" in k}})
    assert [line for line in result.output.splitlines() if "transactions" in line and line.startswith("OK")], \
        result.output
    code, out = await run_cli("worker", "--role", "callbacks", env=env, timeout=90)
    assert code not in (0, -9), out[-3000:]
    assert [line for line in out.splitlines() if "TransactionalId prefix" in line], out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def stop_timeline(log: Any) -> list[str]:
    """The worker's log lines from its last "stopping" on (what the stop spent its time on)."""
    lines = log.read_text(errors="replace").splitlines() if log else []
    start = max((i for i, line in enumerate(lines) if '"stopping"' in line), default=len(lines))
    return lines[start:]


async def unread(kafka: KafkaSettings, *inputs: str) -> int:
    """Records past the dispatch group's committed offsets in these of its inputs: what a worker
    started now would read (exact on sms.outbound, which the test writes; in the retry and scheduled
    topics, which the worker writes in transactions, each transaction marker counts as one)."""
    ends = await end_offsets(kafka, [topics.spec(t).name for t in inputs])
    async with GroupWatch(kafka, kafka.group_id) as group:
        committed = await group.committed(ends)
    return sum(end - committed[tp] for tp, end in ends.items())


def grace_period_s() -> int:
    """The shortest terminationGracePeriodSeconds of the chart's workers (`full` scenario)."""
    from tests.helm.test_chart import rendered

    return min(d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
               for d in rendered("full").of("Deployment") if "worker" in d["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.usefixtures("secure_topics")
async def test_sigterm_over_sasl_ssl_exits_well_within_the_grace_period_and_loses_nothing(secure: KafkaCluster) -> None:
    """Over TLS asyncio waits up to 30 s for the broker's close_notify on each connection closed
    (ssl_shutdown_timeout); a worker closing its clients one after the other outlived Kubernetes'
    grace period and was killed mid-close. SIGTERM to exit, three times under load, with every
    role: each well within the chart's shortest grace period (margin 10 s for the drain and a
    loaded machine), and no message lost or sent twice."""
    bound_s = grace_period_s() - 10
    route = {"smpp": {"provider": "smpp_rest", "batch_max": "20", "concurrency": "16"}}
    n, stops = 6000, 3
    stack = LocalStack(broker=secure, owns_broker=False, group_id=GROUP)
    took: list[float] = []
    try:
        await stack.start_simulator("smpp_rest")
        await stack.set_faults("smpp_rest", latency_ms=20)
        expected = [f"term-tls-{i}" for i in range(n)]
        async with Follower(stack.kafka) as f:   # the admin reads the results
            worker, _ = await asyncio.gather(stack.start_worker(env=cli_env(secure), routes=route, roles=("all",)),
                                             produce(stack.kafka, many(n, keys=300, prefix="term-tls")))
            for k in range(stops):
                # stopped while sending: the worker (a fresh one after the first stop) has results out
                d0 = f.tally.done(expected)
                await until(lambda: f.tally.done(expected) >= min(d0 + 300, n - 1), 90)
                assert f.tally.done(expected) < n, "all sent before the stop: more messages needed"
                t0 = time.monotonic()
                code = await worker.stop(timeout=60)
                took.append(round(time.monotonic() - t0, 1))
                print(f"\nSIGTERM to exit {took[-1]} s (exit {code}), {f.tally.done(expected)} of {n} done:", *stop_timeline(worker.log), sep="\n  ")
                assert code == 0, worker.log.read_text(errors="replace")[-3000:] if worker.log else code
                # After the last stop, a worker only for what is left: the last stop usually drained
                # and committed everything (the offsets below say so exactly; a worker started
                # anyway was stopped again before it had even joined, and proved nothing).
                if k < stops - 1 or await unread(stack.kafka, "outbound", "retry", "scheduled"):
                    worker = await stack.start_worker(env=cli_env(secure), routes=route, roles=("all",))
            assert await f.wait_for(expected, timeout=180, settle_s=2.0), f.tally.missing(expected)
            for w in stack.workers:   # the provider's count once no worker can send any more
                await w.stop()
            assert await unread(stack.kafka, "outbound") == 0, "messages not committed: the next worker would send them again"
        assert f.tally.missing(expected) == []
        assert f.tally.duplicates(expected) == 0
        stats = await stack.sim_stats("smpp_rest")
    finally:
        await stack.stop()
    print(f"SIGTERM to exit over SASL_SSL: {took} s (bound {bound_s} s); provider sends {stats['messages']} for {n}")
    assert max(took) < bound_s, took
    # an orderly stop drains and commits: no message reaches the provider twice
    assert stats["messages"] == n
