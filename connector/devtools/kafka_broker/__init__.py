"""Apache Kafka brokers on loopback for the tests and ``sms-connector bench --broker kafka``.

The connector's users run Apache Kafka; this module runs the real broker (KRaft, Java 17), not
the embedded Tansu of ``dev``. It owns:

* **the jars**: ``pom.xml`` next to this file pins the Kafka version; ``fetch_jars()`` runs
  ``mvn dependency:copy-dependencies`` once into a cache (``~/.cache/sms-connector/kafka-<version>``,
  or ``$KAFKA_JARS_CACHE``) and never again while the cache is complete;
* **the configs**: ``server.properties`` and a log4j2 config per node, written here;
* **the shapes**: one combined broker+controller (``KafkaCluster()``), three of them with
  replication 3 and ``min.insync.replicas=2`` (``KafkaCluster(nodes=3)``), and a SASL_SSL broker
  (``KafkaCluster(security="sasl_ssl")``: SCRAM-SHA-512, a CA and a broker certificate made
  with ``openssl``, the standard authorizer, an ``admin`` super user).

Each node listens on free loopback ports with a small heap. ``stop()`` tears everything down;
its directory (logs, data) is removed unless ``keep`` says otherwise (the tests keep it when a
test failed). ``BrokerUnavailable`` says plainly what is missing (Java 17, Maven).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from connector.config import KafkaSettings, Secret
from connector.devtools.embedded_broker import BrokerUnavailable, free_port, wait_for_port

HERE = Path(__file__).parent
POM = HERE / "pom.xml"
KAFKA_VERSION = re.search(r"<kafka\.version>([^<]+)<", POM.read_text()).group(1)  # type: ignore[union-attr]
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"


def cache_dir() -> Path:
    override = os.environ.get("KAFKA_JARS_CACHE")
    root = Path(override) if override else Path.home() / ".cache" / "sms-connector"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:10]
    return root / f"kafka-{KAFKA_VERSION}-{digest}"


def missing_tools() -> list[str]:
    """What this machine lacks to run Apache Kafka (empty when the jars are cached and Java is there)."""
    missing = []
    if not shutil.which("java"):
        missing.append("Java 17 (java)")
    if not (cache_dir() / ".complete").exists() and not shutil.which("mvn"):
        missing.append("Maven (mvn)")
    if not shutil.which("openssl"):
        missing.append("openssl")
    return missing


def fetch_jars(log: Path | None = None) -> Path:
    """The directory of the broker's jars, downloading them with Maven on the first call only."""
    libs = cache_dir()
    if (libs / ".complete").exists():
        return libs
    missing = missing_tools()
    if missing:
        raise BrokerUnavailable(f"Apache Kafka needs {' and '.join(missing)}: install them "
                                "(Debian: apt-get install openjdk-17-jre-headless maven openssl)")
    libs.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / f"{libs.name}.lock", "w") as lock:   # one download when runs race
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / ".complete").exists():
            return libs
        cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=libs)
        if done.returncode != 0:
            if log:
                log.write_text(done.stdout + done.stderr)
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise BrokerUnavailable(f"Maven could not fetch Apache Kafka {KAFKA_VERSION} (is Maven Central "
                                    f"reachable?):\n{tail}")
        (libs / ".complete").write_text(KAFKA_VERSION + "\n")
    return libs


def java_command(libs: Path, main: str, *args: str, heap: str = "384m", log4j: Path | None = None) -> list[str]:
    cmd = ["java", f"-Xmx{heap}", f"-Xms{min(64, int(heap[:-1]))}m", "-XX:+UseSerialGC",
           "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-Djava.awt.headless=true"]
    if log4j:
        cmd.append(f"-Dlog4j2.configurationFile={log4j}")
    return [*cmd, "-cp", f"{libs}/*", main, *args]


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# --- certificates (SASL_SSL) ------------------------------------------------------------------

def make_certificates(directory: Path) -> dict[str, Path]:
    """A throw-away CA and a broker certificate for 127.0.0.1 / localhost (PEM files).

    Returns ca (certificate), broker (key + certificate chain, Kafka's PEM keystore), and
    other_ca (an unrelated CA: a client trusting it sees an untrusted broker)."""
    directory.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    for ca in ("ca", "other-ca"):
        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=sms-connector test {ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "broker.key", "-out", "broker.csr")
    (directory / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "broker.ext", "-out", "broker.crt")
    ssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.pk8")
    keystore = directory / "broker-keystore.pem"
    keystore.write_text((directory / "broker.pk8").read_text() + (directory / "broker.crt").read_text()
                        + (directory / "ca.pem").read_text())
    return {"ca": directory / "ca.pem", "broker": keystore, "other_ca": directory / "other-ca.pem"}


# --- nodes and clusters ------------------------------------------------------------------------

@dataclass
class KafkaNode:
    node_id: int
    directory: Path
    port: int
    controller_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> Path:
        return self.directory / "server.log"


@dataclass
class KafkaCluster:
    """One or three Apache Kafka nodes (combined broker + controller, KRaft) on loopback."""

    nodes: int = 1
    security: str = "plaintext"          # or "sasl_ssl"
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sms-kafka-")))
    heap: str = "384m"
    users: dict[str, str] = field(default_factory=dict)   # SCRAM-SHA-512 users besides admin (sasl_ssl)
    members: list[KafkaNode] = field(default_factory=list)
    certificates: dict[str, Path] = field(default_factory=dict)
    cluster_id: str = field(default_factory=new_cluster_id)
    libs: Path | None = None

    @property
    def replication_factor(self) -> int:
        return min(self.nodes, 3)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.members)

    def settings(self, username: str = ADMIN_USER, password: str | None = None, **overrides: object) -> KafkaSettings:
        """Client settings for this cluster: production defaults (idempotent producer on)."""
        values: dict[str, object] = {"bootstrap_servers": self.bootstrap_servers,
                                     "replication_factor": self.replication_factor}
        if self.security == "sasl_ssl":
            secret = password if password is not None else ({ADMIN_USER: ADMIN_PASSWORD} | self.users)[username]
            values.update(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username=username,
                          sasl_password=Secret(secret), ssl_cafile=str(self.certificates["ca"]))
        values.update(overrides)
        return KafkaSettings(**values)  # type: ignore[arg-type]

    # -- lifecycle

    def start(self, timeout: float = 120.0) -> KafkaCluster:
        self.libs = fetch_jars(self.directory / "maven.log")
        if self.security == "sasl_ssl":
            self.certificates = make_certificates(self.directory / "certs")
        for i in range(self.nodes):
            self.members.append(KafkaNode(i + 1, self.directory / f"node-{i + 1}", free_port(), free_port()))
        for node in self.members:
            self._write_configs(node)
            self._format(node)
        try:
            for node in self.members:
                self._launch(node)
            self.wait_ready(timeout)
        except BaseException:
            self.stop(keep=True)
            raise
        return self

    def wait_ready(self, timeout: float = 120.0, nodes: list[KafkaNode] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes or self.members:
            while not wait_for_port("127.0.0.1", node.port, 0.5):
                if not node.alive:
                    raise BrokerUnavailable(f"Apache Kafka node {node.node_id} exited with {node.process.returncode if node.process else '?'}"
                                            f"; see {node.log}:\n{tail(node.log)}")
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"Apache Kafka node {node.node_id} did not listen within {timeout:.0f}s; "
                                            f"see {node.log}:\n{tail(node.log)}")

    def stop(self, keep: bool = False, timeout: float = 20.0) -> None:
        """Stop every node at once (one by one, the last ones would wait for a controller quorum
        that is gone), killing what is still running after ``timeout``."""
        procs = [n.process for n in self.members if n.process is not None and n.process.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for node in self.members:
            node.process = None
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- faults

    def kill_node(self, node: KafkaNode) -> None:
        """kill -9: no controlled shutdown, leadership moves when the controller notices."""
        if node.process and node.alive:
            node.process.kill()
            node.process.wait(timeout=10)

    def stop_node(self, node: KafkaNode, timeout: float = 60.0) -> None:
        """SIGTERM: a controlled shutdown (leadership moves first), as a rolling restart does."""
        proc, node.process = node.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart_node(self, node: KafkaNode, timeout: float = 120.0) -> None:
        self.stop_node(node)
        self._launch(node)
        self.wait_ready(timeout, [node])

    def pause(self) -> None:
        """SIGSTOP every node (a stalled broker)."""
        for node in self.members:
            if node.process and node.alive:
                node.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for node in self.members:
            if node.process and node.alive:
                node.process.send_signal(signal.SIGCONT)

    # -- internals

    def _write_configs(self, node: KafkaNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.members)
        rf = self.replication_factor
        protocol = "SASL_SSL" if self.security == "sasl_ssl" else "PLAINTEXT"
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"{protocol}://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"{protocol}://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": protocol,
            "listener.security.protocol.map": f"{protocol}:{protocol},CONTROLLER:PLAINTEXT",
            "log.dirs": node.directory / "data",
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "default.replication.factor": rf,
            "min.insync.replicas": 2 if rf >= 3 else 1,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 3,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": 2 if rf >= 3 else 1,
            "transaction.state.log.num.partitions": 3,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": 2 if rf >= 3 else 1,
            "group.initial.rebalance.delay.ms": 0,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
            "log.segment.bytes": 16 * 1024 * 1024,
            "log.index.size.max.bytes": 1024 * 1024,
            "controlled.shutdown.enable": "true",
            # a killed node comes back as a follower: no waiting 5 min for the preferred leader
            "leader.imbalance.check.interval.seconds": 10,
        }
        if self.security == "sasl_ssl":
            jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                    f'username="{ADMIN_USER}" password="{ADMIN_PASSWORD}";')
            props.update({
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": self.certificates["broker"],
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": self.certificates["ca"],
                "ssl.endpoint.identification.algorithm": "",
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                # the controller listener is PLAINTEXT on loopback only: its (anonymous) peers are
                # the nodes themselves; every client listener needs SCRAM
                "super.users": f"User:{ADMIN_USER};User:ANONYMOUS",
                "allow.everyone.if.no.acl.found": "false",
            })
        (node.directory / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (node.directory / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {node.log}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "logger.server.name = kafka.server.KafkaRaftServer\n"
            "logger.server.level = INFO\n"
            "logger.broker.name = kafka.server.BrokerServer\n"
            "logger.broker.level = INFO\n")

    def _format(self, node: KafkaNode) -> None:
        assert self.libs is not None
        args = ["format", f"--cluster-id={self.cluster_id}", f"--config={node.directory / 'server.properties'}",
                "--ignore-formatted"]   # "=": an id may start with "-"
        if self.security == "sasl_ssl":
            for user, password in {ADMIN_USER: ADMIN_PASSWORD, **self.users}.items():
                args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        done = subprocess.run(java_command(self.libs, "kafka.tools.StorageTool", *args, heap="128m",
                                          log4j=node.directory / "log4j2.properties"),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerUnavailable(f"formatting Apache Kafka storage failed: {done.stdout}{done.stderr}")

    def _launch(self, node: KafkaNode) -> None:
        assert self.libs is not None
        out = open(node.directory / "stdout.log", "ab")
        node.process = subprocess.Popen(
            java_command(self.libs, "kafka.Kafka", str(node.directory / "server.properties"), heap=self.heap,
                         log4j=node.directory / "log4j2.properties"),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --- ACLs (the standard authorizer) ------------------------------------------------------------

RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5, "transactionalid": 5}
PATTERN_TYPES = {"literal": 3, "prefix": 4, "prefixed": 4}
OPERATIONS = {"read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7, "describe": 8,
              "clusteraction": 9, "describeconfigs": 10, "alterconfigs": 11, "idempotentwrite": 12}
ALLOW = 3


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule, in the words of a Strimzi KafkaUser (type, name, patternType, operation)."""

    resource_type: str
    name: str
    pattern_type: str
    operation: str


async def grant(k: KafkaSettings, principal: str, acls: list[Acl]) -> None:
    """Create ALLOW ACLs for ``principal`` (e.g. ``User:worker``) with the admin settings ``k``."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    from connector.kafka import client_options

    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        for acl in acls:
            request = CreateAclsRequest(RESOURCE_TYPES[acl.resource_type.lower()], acl.name,
                                        PATTERN_TYPES[acl.pattern_type.lower()], principal, "*",
                                        OPERATIONS[acl.operation.lower()], ALLOW)
            response = await admin._send_request(request)  # noqa: SLF001 - aiokafka has no create_acls
            for error_code, message in response.creation_responses:
                if error_code:
                    raise RuntimeError(f"CreateAcls {acl} failed: error {error_code} {message}")
    finally:
        await admin.close()

