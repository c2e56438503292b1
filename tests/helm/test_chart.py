"""The Helm chart (helm/sms-connector), rendered and linted by Helm's own engine.

``helm-python-sdk`` binds Helm v4's Go SDK: ``helm.lint`` is ``helm lint --strict
--kube-version``, the render is ``helm template --kube-version``. Every scenario of
``helm/sms-connector/ci/*-values.yaml`` (the chart-testing convention) is linted, rendered and
validated for two Kubernetes minor versions: core kinds with kubernetes-validate (strict, its
bundled schemas, offline), custom resources with the JSON Schemas of ``shared/k8s-schemas``. A
kind with no schema fails. Then the objects are checked against each other and against the
worker itself: its CLI, its HTTP routes, its settings, its topics and its metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import click
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

from connector import contract as topics
from connector.devtools import chart as chart_gen
from connector import metrics as worker_metrics
from connector.config import ConfigError, Settings, describe, load

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "sms-connector"
# CI runs in a fresh clone with shared/ beside it: <repo>/../shared.
SHARED_SCHEMAS = (ROOT / ".." / "shared" / "k8s-schemas").resolve()
SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART_DIR / "ci").glob("*-values.yaml"))}
KUBE_VERSIONS = ("1.29.0", "1.33.0")
RELEASE, NAMESPACE = "sms-connector", "sms"
ROLES = ("dispatch", "callbacks", "pollers")
SECRETS_DIR = "/var/run/secrets/sms-connector"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
                      "helm.sh/chart")
STRIMZI_KINDS = ("KafkaTopic", "KafkaUser")
# Metrics the chart's alerts and dashboard may use before the worker defines them (name -> type).
# Once connector.metrics defines one, its type there must match.
METRICS_EXPECTED_LATER = {"sms_kafka_consumer_lag": "gauge"}


# --------------------------------------------------------------------------------------------
# Rendering (cached per scenario and Kubernetes version: render takes milliseconds, validation
# is what costs)


@cache
def loaded_chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render(values: dict[str, Any], kube_version: str | None = None) -> dict[str, str]:
    """``helm template`` of the chart. ``Chart.render`` (helm-python-sdk 0.2.2) has no
    ``kube_version`` argument, but the C ABI's render options take it, as ``lint`` does."""
    if kube_version is None:
        return loaded_chart().render(values, name=RELEASE, namespace=NAMESPACE)
    opts = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": kube_version}
    out: dict[str, str] = json.loads(_native.call_string("helm_render", loaded_chart()._raw(), json.dumps(values),
                                                         json.dumps(opts)))
    return out


@dataclass
class Rendered:
    files: dict[str, str]
    objects: list[dict[str, Any]]

    @property
    def notes(self) -> str:
        return next((t for p, t in self.files.items() if p.endswith("NOTES.txt")), "")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    @property
    def configmap(self) -> dict[str, Any]:
        return self.one("ConfigMap", RELEASE)

    def deployment(self, role: str) -> dict[str, Any] | None:
        found = [d for d in self.of("Deployment") if d["metadata"]["name"] == f"{RELEASE}-{role}"]
        return found[0] if found else None


def parse(files: dict[str, str]) -> list[dict[str, Any]]:
    """Every YAML document Helm rendered, parsed (Helm does not parse what it outputs)."""
    objects = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path}: a document is not a mapping: {doc!r}"
            for key in ("apiVersion", "kind", "metadata"):
                assert key in doc, f"{path}: document without {key}"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without a name"
            objects.append(doc)
    return objects


def scenario_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(SCENARIOS[name].read_text()) or {}


_RENDERS: dict[tuple[str, str | None], Rendered] = {}


def rendered(name: str, kube_version: str | None = None) -> Rendered:
    key = (name, kube_version)
    if key not in _RENDERS:
        files = render(scenario_values(name), kube_version)
        _RENDERS[key] = Rendered(files, parse(files))
    return _RENDERS[key]


def merged_values(name: str) -> dict[str, Any]:
    return loaded_chart().merge_values(scenario_values(name))


scenarios = pytest.mark.parametrize("scenario", sorted(SCENARIOS))
scenarios_x_versions = pytest.mark.parametrize("scenario,kube_version",
                                               [(s, v) for s in sorted(SCENARIOS) for v in KUBE_VERSIONS])


# --------------------------------------------------------------------------------------------
# Schemas


@cache
def crd_validator(path: Path) -> jsonschema.protocols.Validator:
    # Not check_schema(): some upstream patterns use Go regexp syntax (a "(?i)" flag mid-pattern)
    # that Python's re refuses; they constrain fields the chart does not set.
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def schema_errors(obj: dict[str, Any], kube_version: str) -> list[str]:
    """Problems of one object against its schema; fails the test when there is no schema."""
    kind, api = obj["kind"], obj["apiVersion"]
    group, _, version = api.rpartition("/")
    if group and (SHARED_SCHEMAS / group).is_dir():
        path = SHARED_SCHEMAS / group / f"{kind.lower()}_{version}.json"
        if not path.is_file():
            pytest.fail(f"no schema for {kind} {api} in {SHARED_SCHEMAS}: add one, a kind is never skipped")
        return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in crd_validator(path).iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"no schema for {kind} {api} (Kubernetes {kube_version}) in kubernetes-validate or "
                    f"{SHARED_SCHEMAS}: a kind is never skipped")
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}"]
    return []


def test_shared_schemas_are_found() -> None:
    assert (SHARED_SCHEMAS / "README.md").is_file(), f"{SHARED_SCHEMAS} is missing: shared/ must sit beside the repo"


def test_a_kind_without_schema_fails() -> None:
    meta = {"name": "x", "labels": {}}
    for unknown in ({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": meta},
                    {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": meta, "spec": {}}):
        with pytest.raises(pytest.fail.Exception, match="no schema"):
            schema_errors(unknown, KUBE_VERSIONS[0])


def test_validation_is_strict() -> None:
    """Unknown fields and wrong types are errors, for core kinds and custom resources alike."""
    r = rendered("full", KUBE_VERSIONS[0])
    deployment = json.loads(json.dumps(r.of("Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    assert schema_errors(deployment, KUBE_VERSIONS[0])
    scaled = json.loads(json.dumps(r.of("ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 500
    assert schema_errors(scaled, KUBE_VERSIONS[0])
    user = json.loads(json.dumps(r.of("KafkaUser")[0]))
    user["spec"]["authentication"]["type"] = "scram-sha-256"
    assert schema_errors(user, KUBE_VERSIONS[0])


def test_kubernetes_validate_works_offline() -> None:
    """Its schemas ship in the package; both versions under test are bundled."""
    bundled = kubernetes_validate.utils.all_versions()
    for v in KUBE_VERSIONS:
        assert v in bundled


# --------------------------------------------------------------------------------------------
# Lint, render, validate: every scenario x Kubernetes version


def test_required_scenarios_exist() -> None:
    assert {"default", "full", "strimzi-v1beta2", "dispatch-only"} <= set(SCENARIOS)
    assert scenario_values("default") == {}
    v1beta2 = merged_values("strimzi-v1beta2")
    assert v1beta2["strimzi"]["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert v1beta2["kafka"]["securityProtocol"] == "SASL_PLAINTEXT"
    only = merged_values("dispatch-only")
    assert only["credentials"]["existingSecret"] and not only["credentials"]["create"]
    assert [r for r in ROLES if only[r]["enabled"]] == ["dispatch"]


@scenarios_x_versions
def test_lint_strict(scenario: str, kube_version: str) -> None:
    report = helm.lint(CHART_DIR, scenario_values(scenario), strict=True, kube_version=kube_version,
                       namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


@scenarios_x_versions
def test_renders_and_validates(scenario: str, kube_version: str) -> None:
    r = rendered(scenario, kube_version)
    assert r.objects
    problems = {f"{o['kind']}/{o['metadata']['name']}": errs
                for o in r.objects if (errs := schema_errors(o, kube_version))}
    assert not problems, json.dumps(problems, indent=1)


@scenarios
def test_output_is_the_same_for_every_kube_version(scenario: str) -> None:
    """The chart does not branch on the cluster version: what is validated for one is what installs."""
    first, *others = (rendered(scenario, v).files for v in KUBE_VERSIONS)
    for other in others:
        assert other == first


def test_kube_version_range_admits_the_tested_versions() -> None:
    constraint = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"]

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.lstrip("v").split("-")[0].split("."))

    def admits(v: str) -> bool:
        ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
               "<": lambda a, b: a < b, "=": lambda a, b: a == b}
        for term in constraint.split():
            op, bound = re.match(r"^(>=|<=|>|<|=)?(.+)$", term).groups()  # type: ignore[union-attr]
            if not ops[op or "="](version(v), version(bound)):
                return False
        return True

    for v in KUBE_VERSIONS:
        assert admits(v), f"kubeVersion {constraint!r} excludes {v}"
    assert not admits("1.28.9")


# --------------------------------------------------------------------------------------------
# Names, labels, selectors


def _labels(o: dict[str, Any]) -> dict[str, str]:
    return o["metadata"].get("labels") or {}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@scenarios
def test_names_are_dns_labels(scenario: str) -> None:
    for o in rendered(scenario).objects:
        name = o["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), f"{o['kind']} {name!r} is not a DNS-1123 label"
        assert o["metadata"].get("namespace", NAMESPACE) == NAMESPACE


def test_longest_release_name_keeps_names_valid() -> None:
    values = {**scenario_values("full"), "fullnameOverride": "a" * 40}
    for o in parse(render(values)):
        name = o["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), name


@scenarios
def test_recommended_labels_everywhere(scenario: str) -> None:
    for o in rendered(scenario).objects:
        labels = _labels(o)
        missing = [k for k in RECOMMENDED_LABELS if not labels.get(k)]
        assert not missing, f"{o['kind']}/{o['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if o["kind"] == "Deployment":
            pod = o["spec"]["template"]["metadata"]["labels"]
            assert not [k for k in RECOMMENDED_LABELS if not pod.get(k)]


@scenarios
def test_selectors_match_exactly_one_deployment(scenario: str) -> None:
    r = rendered(scenario)
    deployments = r.of("Deployment")
    for d in deployments:
        pod = d["spec"]["template"]["metadata"]["labels"]
        assert _selects(d["spec"]["selector"]["matchLabels"], pod)
        for c in d["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            assert _selects(c["labelSelector"]["matchLabels"], pod)
    selectors = [(s, s["spec"]["selector"]) for s in r.of("Service")]
    selectors += [(p, p["spec"]["selector"]["matchLabels"]) for p in r.of("PodDisruptionBudget")]
    selectors += [(n, n["spec"]["podSelector"]["matchLabels"]) for n in r.of("NetworkPolicy")]
    for o, sel in selectors:
        hits = [d["metadata"]["name"] for d in deployments
                if _selects(sel, d["spec"]["template"]["metadata"]["labels"])]
        assert len(hits) == 1, f"{o['kind']}/{o['metadata']['name']} selects {hits}"


@scenarios
def test_each_role_is_one_deployment(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    assert sorted(d["metadata"]["name"] for d in r.of("Deployment")) == \
        sorted(f"{RELEASE}-{role}" for role in ROLES if values[role]["enabled"])


# --------------------------------------------------------------------------------------------
# The pods, against the worker


def _container(d: dict[str, Any]) -> dict[str, Any]:
    containers = d["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def parse_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``sms-connector <argv>`` with the real click command, without running it."""
    from connector.cli import main

    main.make_context("sms-connector", list(argv)).close()
    cmd = main.get_command(click.Context(main), argv[0])
    if cmd is None:
        raise click.UsageError(f"no such command {argv[0]!r}")
    with cmd.make_context(argv[0], list(argv[1:])) as ctx:
        return argv[0], ctx.params


def test_cli_parser_rejects_bogus_arguments() -> None:
    assert parse_cli(["worker", "--role", "dispatch"]) == ("worker", {"roles": ("dispatch",), "config": None})
    for bogus in (["worker", "--role", "bogus"], ["worker", "--bogus"], ["wurker"]):
        with pytest.raises(click.ClickException):
            parse_cli(bogus)


@scenarios
def test_container_runs_a_real_subcommand(scenario: str) -> None:
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    for d in rendered(scenario).of("Deployment"):
        c = _container(d)
        assert c["command"] == ["sms-connector"] and scripts["sms-connector"] == "connector.cli:main"
        name, params = parse_cli(c["args"])
        role = d["metadata"]["labels"]["app.kubernetes.io/component"]
        assert name == "worker" and params["roles"] == (role,)


@cache
def worker_http_routes() -> frozenset[tuple[str, str]]:
    """(method, path) the worker's HTTP server answers: make_app, plus the callbacks role's routes."""
    from connector.streams.callbacks import CallbackReceiver
    from connector.web import make_app

    async def ready() -> tuple[bool, dict[str, object]]:
        return True, {}

    async def build() -> frozenset[tuple[str, str]]:
        app = make_app(ready)
        app.add_routes(CallbackReceiver(Settings(), None, None).routes())  # type: ignore[arg-type]
        return frozenset((r.method, r.resource.canonical) for r in app.router.routes() if r.resource)

    return asyncio.run(build())


@scenarios
def test_probes_and_ports_match_the_worker(scenario: str) -> None:
    r = rendered(scenario)
    routes = worker_http_routes()
    settings = worker_settings(scenario)
    assert settings.http.host == "0.0.0.0"
    for d in r.of("Deployment"):
        c = _container(d)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": settings.http.port}
        probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        for probe in probes.values():
            assert ("GET", probe["path"]) in routes
            assert ports.get(probe["port"], probe["port"]) == settings.http.port
        assert probes["livenessProbe"]["path"] == "/healthz"
        assert probes["readinessProbe"]["path"] == "/readyz"
    for svc in r.of("Service"):
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] == "http"


@scenarios
def test_pods_are_hardened(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    for d in r.of("Deployment"):
        spec = d["spec"]["template"]["spec"]
        c = _container(d)
        pod_sc, sc = spec["securityContext"], c["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        # Service links would inject SMS_CONNECTOR_<SERVICE>_* variables the worker rejects.
        assert spec["enableServiceLinks"] is False
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "the only writable path is an emptyDir"
        for path, m in mounts.items():
            assert path == "/tmp" or m.get("readOnly") is True
        assert len(spec["topologySpreadConstraints"]) >= 1
        role = d["metadata"]["labels"]["app.kubernetes.io/component"]
        if role == "pollers":
            assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate"
        shutdown = worker_settings(scenario).dispatch.shutdown_timeout_s
        if role == "dispatch":
            assert spec["terminationGracePeriodSeconds"] > shutdown
            keda = values["dispatch"]["autoscaling"]["enabled"]
            assert ("replicas" in d["spec"]) is not keda


@scenarios
def test_config_checksum_rolls_the_pods(scenario: str) -> None:
    r = rendered(scenario)
    cm_text = next(t for p, t in r.files.items() if p.endswith("/configmap.yaml"))
    secret_text = next(t for p, t in r.files.items() if p.endswith("/secret.yaml"))
    for d in r.of("Deployment"):
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert annotations["checksum/config"] == hashlib.sha256(cm_text.encode()).hexdigest()
        if r.of("Secret"):
            assert annotations["checksum/credentials"] == hashlib.sha256(secret_text.encode()).hexdigest()


def test_changed_config_changes_the_checksum() -> None:
    def checksum(values: dict[str, Any]) -> str:
        d = next(o for o in parse(render(values)) if o["kind"] == "Deployment")
        return str(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"config": {"log": {"level": "DEBUG"}}})


# --------------------------------------------------------------------------------------------
# Settings: what the chart sets is what `sms-connector worker` documents and accepts


def worker_environ(r: Rendered, d: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with (ConfigMap through envFrom, then env)."""
    env: dict[str, str] = {}
    c = _container(d)
    for source in c.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(r.one("ConfigMap", name)["data"])
    for e in c.get("env", []):
        assert "value" in e, f"env {e['name']} is not a literal: settings come from the ConfigMap"
        env[e["name"]] = e["value"]
    return env


def projected_files(d: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Absolute path -> (Secret, key) of every file the secrets volume projects."""
    spec = d["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in _container(d)["volumeMounts"]}
    files = {}
    for v in spec["volumes"]:
        for source in v.get("projected", {}).get("sources", []):
            secret = source["secret"]
            for item in secret["items"]:
                files[f"{mounts[v['name']]}/{item['path']}"] = (secret["name"], item["key"])
    return files


@cache
def documented_envs() -> dict[str, list[str]]:
    """Environment variable (``<NAME>`` for routes) -> paths of the documented settings."""
    out: dict[str, list[str]] = {}
    for d in describe():
        out.setdefault(d.env, []).append(d.path)
    return out


def check_documented(key: str, env: dict[str, str]) -> None:
    docs = documented_envs()
    if key.startswith("SMS_CONNECTOR_ROUTES__"):
        _, name, setting = key[len("SMS_CONNECTOR_"):].split("__")
        provider = env[f"SMS_CONNECTOR_ROUTES__{name}__PROVIDER"]
        paths = docs.get(f"SMS_CONNECTOR_ROUTES__<NAME>__{setting}", [])
        assert any(p in (f"routes.<name>.{setting.lower()}", f"routes.<name> (provider={provider}).{setting.lower()}")
                   for p in paths), f"{key} is not a documented setting of provider {provider}"
    else:
        assert key in docs, f"{key} is not a documented setting of `sms-connector worker`"


def worker_settings(scenario: str) -> Settings:
    """The settings each container would load (they share the ConfigMap), secrets replaced."""
    r = rendered(scenario)
    loaded = []
    for d in r.of("Deployment"):
        env = worker_environ(r, d)
        files = projected_files(d)
        for key, value in env.items():
            if value.startswith("file:"):
                assert value[5:] in files, f"{key} points at {value[5:]}, which no volume provides"
                env[key] = f"secret-from-{files[value[5:]][1]}"
        try:
            loaded.append(load(environ=env))
        except ConfigError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{d['metadata']['name']}: the worker would refuse its settings: {exc}")
    assert loaded
    assert all(s == loaded[0] for s in loaded[1:])
    return loaded[0]


@scenarios
def test_every_variable_is_a_documented_setting(scenario: str) -> None:
    r = rendered(scenario)
    for d in r.of("Deployment"):
        env = worker_environ(r, d)
        for key in env:
            if key.startswith("SMS_CONNECTOR_"):
                check_documented(key, env)
    worker_settings(scenario)  # and the worker accepts them all


@scenarios
def test_settings_follow_the_values(scenario: str) -> None:
    settings, values = worker_settings(scenario), merged_values(scenario)
    k = values["kafka"]
    assert settings.kafka.bootstrap_servers == k["bootstrapServers"]
    assert settings.kafka.security_protocol == k["securityProtocol"]
    assert settings.http.port == values["httpPort"]
    if k["securityProtocol"].startswith("SASL_"):
        assert settings.kafka.sasl_mechanism == k["sasl"]["mechanism"]
        assert settings.kafka.sasl_username and settings.kafka.sasl_password is not None
    for section, entries in values["config"].items():
        for setting, value in entries.items():
            if setting != "secretKeys":
                assert getattr(getattr(settings, section), setting) == value, f"config.{section}.{setting}"
    assert sorted(settings.routes) == sorted(values["routes"])
    if settings.routes and values["dispatch"]["enabled"]:
        assert "WARNING" not in rendered(scenario).notes
    elif values["dispatch"]["enabled"]:
        assert "no route is configured" in rendered(scenario).notes


@scenarios
def test_secret_files_come_from_secrets(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    for d in r.of("Deployment"):
        env, files = worker_environ(r, d), projected_files(d)
        referenced = {v.removeprefix("file:") for v in env.values() if v.startswith(SECRETS_DIR) or
                      v.startswith("file:" + SECRETS_DIR)}
        assert referenced == set(files), "every projected file is used, every used file is projected"
        for name, key in files.values():
            rendered_secret = [s for s in r.of("Secret") if s["metadata"]["name"] == name]
            if rendered_secret:
                assert key in rendered_secret[0]["data"]
        assert not [v for v in env.values() if v in values["credentials"]["values"].values()], "secret in env"
    for cm in r.of("ConfigMap"):
        for v in values["credentials"]["values"].values():
            assert v not in json.dumps(cm), "a credential leaked into a ConfigMap"


def test_schema_covers_every_documented_setting() -> None:
    """Every setting of `sms-connector worker` can be set through the chart, exactly once."""
    schema = json.loads(chart_gen.SCHEMA_FILE.read_text())
    config = schema["properties"]["config"]["properties"]
    routes = {k: v for k, v in schema["definitions"].items() if k.startswith("route_")}
    for d in describe():
        parts = d.path.split(".")
        if d.path.startswith("routes."):
            provider = re.search(r"provider=(\w+)", d.path)
            shapes = [routes[f"route_{provider.group(1)}"]] if provider else list(routes.values())
            for shape in shapes:
                where = shape["properties"]["secretKeys"]["properties"] if d.secret else shape["properties"]
                assert parts[-1] in where, f"{d.path} cannot be set in routes"
        elif d.path in chart_gen.CHART_OWNED:
            assert parts[1] not in config[parts[0]]["properties"], f"{d.path} is set by the chart, not config"
        else:
            section = config[parts[0]]["properties"]
            where = section.get("secretKeys", {}).get("properties", {}) if d.secret else section
            assert parts[1] in where, f"{d.path} cannot be set in config"


def test_chart_owned_settings_are_rendered() -> None:
    seen: set[str] = set()
    for scenario in SCENARIOS:
        seen |= set(rendered(scenario).configmap["data"])
    for path in chart_gen.CHART_OWNED:
        section, setting = path.split(".")
        assert f"SMS_CONNECTOR_{section.upper()}__{setting.upper()}" in seen, f"no scenario sets {path}"


# --------------------------------------------------------------------------------------------
# Generated files and the values schema


def test_generated_files_are_current() -> None:
    stale = chart_gen.stale_files()
    assert not stale, f"{[str(p.relative_to(ROOT)) for p in stale]} out of date: run `python -m connector.devtools.chart`"


def test_generator_check_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert chart_gen.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_topics_file_is_the_contract() -> None:
    doc = json.loads(chart_gen.TOPICS_FILE.read_text())
    assert doc == {role: {"name": s.name, "direction": s.direction, "partitions": s.partitions, "config": s.configs}
                   for role, s in topics.specs().items()}


def test_values_schema_is_valid() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert loaded_chart().schema == schema
    for scenario in SCENARIOS:  # what Helm accepts, a standard validator accepts too
        jsonschema.Draft7Validator(schema).validate(merged_values(scenario))


SCHEMA_REJECTIONS = [
    ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
    ({"dispatch": {"replica": 3}}, "additional properties 'replica' not allowed"),
    ({"dispatch": {"replicas": "3"}}, "at '/dispatch/replicas': got string, want integer"),
    ({"httpPort": 80}, "at '/httpPort'"),
    ({"kafka": {"securityProtocol": "SASL"}}, "at '/kafka/securityProtocol'"),
    ({"kafka": {"sasl": {"mechanism": "SCRAM-SHA-1"}}}, "at '/kafka/sasl/mechanism'"),
    ({"kafka": {"sasl": {"password": "hunter2"}}}, "additional properties 'password' not allowed"),
    ({"config": {"dispatch": {"max_inflight": 10}}}, "additional properties 'max_inflight' not allowed"),
    ({"config": {"dispatch": {"max_in_flight": "many"}}},
     "at '/config/dispatch/max_in_flight': got string, want integer"),
    ({"config": {"dispatch": {"max_in_flight": 0}}}, "at '/config/dispatch/max_in_flight'"),
    ({"config": {"log": {"level": "TRACE"}}}, "at '/config/log/level'"),
    ({"config": {"kafka": {"bootstrap_servers": "x:9092"}}}, "additional properties 'bootstrap_servers' not allowed"),
    ({"config": {"kafka": {"sasl_password": "hunter2"}}}, "additional properties 'sasl_password' not allowed"),
    ({"config": {"metrics": {}}}, "additional properties 'metrics' not allowed"),
    ({"routes": {"gw": {"provider": "twilio"}}}, "at '/routes/gw/provider'"),
    ({"routes": {"gw": {"provider": "smpp_rest", "base_url": "https://x", "api_key": "k",
                        "secretKeys": {"api_key": "k"}}}}, "additional properties 'api_key' not allowed"),
    ({"routes": {"gw": {"provider": "smpp_rest", "base_url": "https://x"}}}, "missing property 'secretKeys'"),
    ({"routes": {"gw": {"provider": "smpp_rest", "secretKeys": {"api_key": "k"}}}}, "missing property 'base_url'"),
    ({"routes": {"gw": {"provider": "smpp_rest", "base_url": "https://x", "batch_max": "50",
                        "secretKeys": {"api_key": "k"}}}}, "at '/routes/gw/batch_max': got string, want integer"),
    ({"routes": {"Gateway": {"provider": "smpp_rest"}}}, "'Gateway' does not match pattern"),
    ({"dispatch": {"podDisruptionBudget": {"enabled": True, "minAvailable": "half"}}},
     "at '/dispatch/podDisruptionBudget/minAvailable'"),
    ({"strimzi": {"apiVersion": "kafka.strimzi.io/v1alpha1"}}, "at '/strimzi/apiVersion'"),
    ({"pollers": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
    ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "at '/metrics/serviceMonitor/interval'"),
]


@pytest.mark.parametrize("values,message", SCHEMA_REJECTIONS, ids=[m for _, m in SCHEMA_REJECTIONS])
def test_schema_rejects(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as exc:
        render(values)
    assert message in str(exc.value)


VALID_ROUTE = {"gw": {"provider": "smpp_rest", "base_url": "https://x", "secretKeys": {"api_key": "gw-key"}}}
FAILURES = [
    ({"kafka": {"securityProtocol": "SASL_SSL"}},
     "kafka.securityProtocol=SASL_SSL needs the SASL password: set kafka.sasl.passwordSecret.name"),
    ({"kafka": {"securityProtocol": "SASL_PLAINTEXT", "sasl": {"passwordSecret": {"name": "s", "key": "p"}}}},
     "needs kafka.sasl.username"),
    ({"kafka": {"tls": {"caSecret": {"name": "ca", "key": "ca.crt"}}}},
     "kafka.securityProtocol=PLAINTEXT does not use TLS"),
    ({"dispatch": {"replicas": 13}}, "dispatch.replicas=13 exceeds the 12 partitions of sms.outbound"),
    ({"dispatch": {"autoscaling": {"enabled": True, "maxReplicaCount": 24}}},
     "dispatch.autoscaling.maxReplicaCount=24 exceeds the 12 partitions of sms.outbound"),
    ({"dispatch": {"autoscaling": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 4}}},
     "minReplicaCount=5 is above maxReplicaCount=4"),
    ({"routes": VALID_ROUTE}, "secretKeys refer to credentials gw-key but there is no credentials Secret"),
    ({"routes": VALID_ROUTE, "credentials": {"create": True, "values": {"other": "x"}}},
     'credentials.values has no key "gw-key"'),
    ({"routes": VALID_ROUTE, "credentials": {"create": True, "existingSecret": "s", "values": {"gw-key": "x"}}},
     "set either existingSecret (preferred) or create, not both"),
    ({"credentials": {"values": {"k": "v"}}}, "credentials.values is set but credentials.create is false"),
    ({"strimzi": {"topics": {"enabled": True}}}, "strimzi.topics / strimzi.user need strimzi.clusterName"),
    ({"strimzi": {"clusterName": "c", "user": {"enabled": True}}},
     "strimzi.user.authentication=scram-sha-512 needs kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL"),
    ({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-256"}},
      "strimzi": {"clusterName": "c", "user": {"enabled": True}}}, "kafka.sasl.mechanism SCRAM-SHA-512"),
    ({"strimzi": {"clusterName": "c", "user": {"enabled": True, "authentication": "tls"}}},
     "strimzi.user.authentication=tls needs kafka.securityProtocol SSL"),
    ({"callbacks": {"ingress": {"enabled": True, "host": "x.example.com"}}},
     "callbacks.ingress.enabled needs callbacks.enabled"),
    ({"callbacks": {"enabled": True, "ingress": {"enabled": True}}}, "needs callbacks.ingress.host"),
    ({"dispatch": {"enabled": False}}, "no role is enabled"),
    ({"dispatch": {"terminationGracePeriodSeconds": 20}},
     "dispatch.terminationGracePeriodSeconds=20 must be longer than config.dispatch.shutdown_timeout_s=25"),
    ({"config": {"dispatch": {"shutdown_timeout_s": 60}}}, "must be longer than config.dispatch.shutdown_timeout_s=60"),
    ({"pollers": {"enabled": True, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}}},
     "minAvailable would block every node drain"),
    ({"dispatch": {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}}},
     "dispatch.podDisruptionBudget: set one of minAvailable, maxUnavailable, not both"),
]


@pytest.mark.parametrize("values,message", FAILURES, ids=[m[:60] for _, m in FAILURES])
def test_chart_fails_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as exc:
        render(values)
    assert message in str(exc.value)


# --------------------------------------------------------------------------------------------
# Services, Ingress, NetworkPolicy


@scenarios
def test_callback_endpoint_is_exposed(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    callback_paths = {p for m, p in worker_http_routes() if m == "POST" and p.startswith("/callbacks/")}
    assert callback_paths
    if not values["callbacks"]["enabled"]:
        assert not r.of("Ingress")
        assert all(s["metadata"]["name"].endswith("-metrics") for s in r.of("Service"))
        return
    svc = r.one("Service", f"{RELEASE}-callbacks")
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "callbacks"
    for ing in r.of("Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["backend"]["service"]["name"] == svc["metadata"]["name"]
                assert p["backend"]["service"]["port"]["name"] == svc["spec"]["ports"][0]["name"]
                assert all(cp.startswith(p["path"]) for cp in callback_paths)
                assert not "/metrics".startswith(p["path"]) and not "/healthz".startswith(p["path"])
        host = ing["spec"]["rules"][0]["host"]
        scheme = "https" if ing["spec"].get("tls") else "http"
        assert f"{scheme}://{host}/callbacks/" in r.notes
        assert worker_settings(scenario).callbacks.public_url == f"{scheme}://{host}"
    if not r.of("Ingress"):
        assert f"http://{RELEASE}-callbacks.{NAMESPACE}.svc" in r.notes


@scenarios
def test_notes_tell_where_metrics_are(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    for role in ROLES:
        if values[role]["enabled"]:
            assert f"http://{RELEASE}-{role}-metrics.{NAMESPACE}.svc:{values['httpPort']}/metrics" in r.notes
    assert "port-forward" in r.notes


@scenarios
def test_network_policy_limits_traffic(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    policies = r.of("NetworkPolicy")
    if not values["networkPolicy"]["enabled"]:
        assert not policies
        return
    assert len(policies) == len(r.of("Deployment"))
    for np in policies:
        spec = np["spec"]
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
        ports = [p for rule in spec["ingress"] for p in rule["ports"]]
        assert ports == [{"port": "http", "protocol": "TCP"}], "ingress only to the HTTP port"
        egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
        assert {(53, "UDP"), (53, "TCP")} <= egress_ports
        assert {(p, "TCP") for p in values["networkPolicy"]["kafka"]["ports"]} <= egress_ports
        assert {(p, "TCP") for p in values["networkPolicy"]["providers"]["ports"]} <= egress_ports
        assert all(rule.get("ports") for rule in spec["egress"]), "no egress rule without ports"


# --------------------------------------------------------------------------------------------
# KEDA


@scenarios
def test_keda_scales_dispatch_on_lag(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    scaled = r.of("ScaledObject")
    assert bool(scaled) == values["dispatch"]["autoscaling"]["enabled"]
    partitions = topics.spec("outbound").partitions
    for so in scaled:
        target = so["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        d = r.one("Deployment", target["name"])
        assert "replicas" not in d["spec"], "KEDA owns the replica count"
        assert d["metadata"]["labels"]["app.kubernetes.io/component"] == "dispatch"
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions
        settings = worker_settings(scenario)
        # the input scales; the scheduled topic's lag only keeps one worker up (no scale to zero
        # while messages wait for their send time)
        assert [t["metadata"]["topic"] for t in so["spec"]["triggers"]] == [topics.spec("outbound").name,
                                                                              topics.spec("scheduled").name]
        assert so["spec"]["triggers"][1]["metadata"]["activationLagThreshold"] == "0"
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), "trigger metadata must be strings"
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == settings.kafka.group_id
            assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
            assert meta["allowIdleConsumers"] == "false"
            assert ("sasl" in meta) == settings.kafka.security_protocol.startswith("SASL_")
            assert ("tls" in meta) == settings.kafka.security_protocol.endswith("SSL")
            if "sasl" in meta:
                assert meta["sasl"] == {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256",
                                        "SCRAM-SHA-512": "scram_sha512"}[settings.kafka.sasl_mechanism]
            ref = trigger.get("authenticationRef")
            if "sasl" in meta:
                assert ref, "SASL needs a TriggerAuthentication"
            if ref:
                auth = r.one("TriggerAuthentication", ref["name"])
                params = {t["parameter"] for t in auth["spec"].get("secretTargetRef", [])}
                params |= {t["parameter"] for t in auth["spec"].get("configMapTargetRef", [])}
                if "sasl" in meta:
                    assert {"username", "password"} <= params
                for cm_ref in auth["spec"].get("configMapTargetRef", []):
                    assert cm_ref["key"] in r.one("ConfigMap", cm_ref["name"])["data"]
    for d in r.of("Deployment"):
        if not [so for so in scaled if so["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]]:
            assert "replicas" in d["spec"]


# --------------------------------------------------------------------------------------------
# Strimzi


@scenarios
def test_strimzi_resources(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    st = values["strimzi"]
    for o in r.objects:
        if o["kind"] in STRIMZI_KINDS:
            assert _labels(o)["strimzi.io/cluster"] == st["clusterName"]
            assert o["apiVersion"] == st["apiVersion"]
    kafka_topics = r.of("KafkaTopic")
    if st["topics"]["enabled"]:
        specs = {s.name: s for s in topics.specs().values()}
        assert sorted(t["spec"]["topicName"] for t in kafka_topics) == sorted(specs)
        for t in kafka_topics:
            s = specs[t["spec"]["topicName"]]
            assert t["spec"]["partitions"] == s.partitions
            assert {k: t["spec"]["config"][k] for k in s.configs} == s.configs
            if st["topics"]["keep"]:
                assert t["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert not kafka_topics
    users = r.of("KafkaUser")
    assert len(users) == int(st["user"]["enabled"])
    settings = worker_settings(scenario) if users else None
    for u in users:
        names = {s.name: s for s in topics.specs().values()}
        group = settings.kafka.group_id  # type: ignore[union-attr]
        assert u["spec"]["authentication"]["type"] == st["user"]["authentication"]
        for acl in u["spec"]["authorization"]["acls"]:
            res = acl["resource"]
            assert acl.get("type", "allow") == "allow" and "All" not in acl["operations"]
            if res["type"] == "topic":
                assert res["name"] in names and res["patternType"] == "literal"
                if names[res["name"]].direction == "input":
                    assert sorted(acl["operations"]) == ["Describe", "Read"]
            elif res["type"] == "transactionalId":
                assert settings.kafka.exactly_once  # type: ignore[union-attr]
                assert (res["name"], res["patternType"]) == (f"{settings.kafka.transactional_id_prefix}-", "prefix")  # type: ignore[union-attr]
                assert sorted(acl["operations"]) == ["Describe", "Write"]
            else:
                assert res["type"] == "group" and acl["operations"] == ["Read"]
                assert (res["name"], res["patternType"]) in {(group, "literal"), (f"{group}-", "prefix")}
        txn = [a for a in u["spec"]["authorization"]["acls"] if a["resource"]["type"] == "transactionalId"]
        assert len(txn) == int(settings.kafka.exactly_once)  # type: ignore[union-attr]
        if settings.kafka.security_protocol.startswith("SASL_"):  # type: ignore[union-attr]
            assert settings.kafka.sasl_username == u["metadata"]["name"]  # type: ignore[union-attr]


def _transactional_acls(config_kafka: dict[str, Any]) -> list[dict[str, Any]]:
    full = scenario_values("full")
    config = full.get("config", {})
    values = {**full, "config": {**config, "kafka": {**config.get("kafka", {}), **config_kafka}}}
    files = render(values)
    [user] = Rendered(files, parse(files)).of("KafkaUser")
    return [a for a in user["spec"]["authorization"]["acls"] if a["resource"]["type"] == "transactionalId"]


def test_kafka_user_may_use_the_transactional_ids_of_exactly_once() -> None:
    """#16: every transactional id the worker uses starts with '<kafka.transactional_id_prefix>-'
    (dispatch, correlator, pollers, callbacks): one prefix ACL, Write + Describe. Without it the
    first InitProducerId fails with TRANSACTIONAL_ID_AUTHORIZATION_FAILED."""
    [acl] = _transactional_acls({})
    assert acl["resource"] == {"type": "transactionalId", "name": "sms-connector-", "patternType": "prefix"}
    assert sorted(acl["operations"]) == ["Describe", "Write"]
    [custom] = _transactional_acls({"transactional_id_prefix": "billing-sms"})
    assert custom["resource"]["name"] == "billing-sms-"
    assert _transactional_acls({"exactly_once": False}) == []
    assert len(_transactional_acls({"exactly_once": True})) == 1


# --------------------------------------------------------------------------------------------
# Monitoring: ServiceMonitor, PrometheusRule, Grafana dashboard


@cache
def known_metrics() -> frozenset[str]:
    """Series names the worker exports (counters with _total, histograms with _bucket/_sum/_count)."""
    from prometheus_client.metrics import MetricWrapperBase

    types: dict[str, str] = {}
    for obj in vars(worker_metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                types[family.name] = family.type
    for name, kind in METRICS_EXPECTED_LATER.items():
        if name in types:
            assert types[name] == kind, f"{name} is a {types[name]}, the chart uses it as a {kind}"
        types.setdefault(name, kind)
    series = {"up"}
    for name, kind in types.items():
        if kind == "counter":
            series.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            series.add(name)
    return frozenset(series)


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression; fails when it does not parse."""
    try:
        import promql_parser
    except ImportError:  # pragma: no cover
        pytest.fail("promql-parser is not installed: it is a dev dependency (PromQL syntax checks)")
    try:
        ast = promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"PromQL does not parse: {exc}\n{expr}")
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(ast, visit)
    return names


def test_promql_check_catches_errors() -> None:
    assert promql_metrics("sum(rate(sms_outbound_consumed_total[5m]))") == {"sms_outbound_consumed_total"}
    with pytest.raises(pytest.fail.Exception):
        promql_metrics("sum(rate(sms_outbound_consumed_total[5m])")


@scenarios
def test_service_monitor_scrapes_every_role(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    monitors = r.of("ServiceMonitor")
    assert len(monitors) == int(values["metrics"]["serviceMonitor"]["enabled"])
    metrics_services = {s["metadata"]["name"] for s in r.of("Service") if s["metadata"]["name"].endswith("-metrics")}
    assert metrics_services == {f"{RELEASE}-{role}-metrics" for role in ROLES if values[role]["enabled"]}
    for sm in monitors:
        selected = {s["metadata"]["name"] for s in r.of("Service")
                    if _selects(sm["spec"]["selector"]["matchLabels"], _labels(s))}
        assert selected == metrics_services, "scrapes each pod once"
        for ep in sm["spec"]["endpoints"]:
            assert ("GET", ep["path"]) in worker_http_routes()
            for s in selected:
                assert ep["port"] in {p["name"] for p in r.one("Service", s)["spec"]["ports"]}


@scenarios
def test_prometheus_rules(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    rules = r.of("PrometheusRule")
    assert len(rules) == int(values["metrics"]["prometheusRule"]["enabled"])
    for pr in rules:
        alerts = {}
        for group in pr["spec"]["groups"]:
            for rule in group["rules"]:
                used = promql_metrics(rule["expr"])
                assert used and used <= known_metrics(), f"{rule['alert']}: unknown metrics {used - known_metrics()}"
                assert f'namespace="{NAMESPACE}"' in rule["expr"], "scoped to this release"
                assert rule["labels"]["severity"] and rule["annotations"]["summary"]
                alerts[rule["alert"]] = rule["expr"]
        expected = {"SmsConnectorTargetDown"}
        if values["dispatch"]["enabled"]:
            expected |= {"SmsConnectorErrorRatioHigh", "SmsConnectorDeadLettersGrowing", "SmsConnectorConsumerLagHigh",
                         "SmsConnectorWorkerLostItsPartitions"}
        if values["pollers"]["enabled"]:
            expected.add("SmsConnectorMoPageAtRisk")
        if values["callbacks"]["enabled"]:
            expected.add("SmsConnectorCallbackErrors")
        assert expected <= set(alerts)
        if "SmsConnectorCallbackErrors" in alerts:
            assert 'outcome="error"' in alerts["SmsConnectorCallbackErrors"]
        if values["dispatch"]["enabled"]:   # spend budgets: a warning before the budget is spent, at the threshold
            threshold = values["metrics"]["prometheusRule"]["budgetSpentThreshold"]
            assert f"> {threshold}" in alerts["SmsConnectorBudgetNearlySpent"]
            assert {"sms_budget_segments_spent", "sms_budget_segments"} <= promql_metrics(
                alerts["SmsConnectorBudgetNearlySpent"])
            assert 'reason="budget"' in alerts["SmsConnectorBudgetSpent"]


DASHBOARD_MUST_SHOW = {
    "throughput": {"sms_outbound_consumed_total"},
    "outcomes": {"sms_outbound_accepted_total", "sms_outbound_failed_total", "sms_outbound_dead_lettered_total"},
    "provider latency": {"sms_provider_request_duration_seconds_bucket"},
    "lag": {"sms_kafka_consumer_lag"},
    "DLR latency": {"sms_delivery_latency_seconds_bucket"},
    "opt-outs": {"sms_optout_suppressed_total"},
    "spend budgets": {"sms_budget_segments_spent", "sms_budget_segments"},
}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


@scenarios
def test_grafana_dashboard(scenario: str) -> None:
    r, values = rendered(scenario), merged_values(scenario)
    maps = [c for c in r.of("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert len(maps) == int(values["metrics"]["dashboard"]["enabled"])
    for cm in maps:
        assert _labels(cm)["grafana_dashboard"] == "1", "the Grafana sidecar finds dashboards by this label"
        (text,) = cm["data"].values()
        dash = json.loads(text)
        assert dash["uid"] and len(dash["uid"]) <= 40 and dash["title"]
        used: set[str] = set()
        for panel in _panels(dash["panels"]):
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m")
                names = promql_metrics(expr)
                assert names <= known_metrics(), f"{panel['title']}: unknown metrics {names - known_metrics()}"
                assert f'namespace="{NAMESPACE}"' in expr
                used |= names
        for what, metrics in DASHBOARD_MUST_SHOW.items():
            assert metrics <= used, f"the dashboard does not show {what}"
