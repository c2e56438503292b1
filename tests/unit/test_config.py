"""config: sources, types, ranges, routes and secrets, with messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError, Secret, describe, load, redacted

SMPP = {"SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest",
        "SMS_CONNECTOR_ROUTES__SMPP__BASE_URL": "http://x", "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "k-secret-1"}


def test_defaults_load() -> None:
    s = load(environ={})
    assert s.kafka.bootstrap_servers == "localhost:9092" and s.routes == {}


def test_env_overrides_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nbootstrap_servers = "file:9092"\ngroup_id = "g-file"\n[dispatch]\nmax_in_flight = 10\n')
    s = load(f, environ={"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "env:9092"})
    assert s.kafka.bootstrap_servers == "env:9092" and s.kafka.group_id == "g-file"
    assert s.dispatch.max_in_flight == 10


def test_routes_from_env_with_provider_settings() -> None:
    s = load(environ=SMPP)
    route = s.routes["smpp"]
    assert route.common.provider == "smpp_rest" and route.provider.base_url == "http://x"
    assert isinstance(route.provider.api_key, Secret) and route.provider.api_key.value == "k-secret-1"
    assert "k-secret-1" in s.secrets()


@pytest.mark.parametrize("env, fragment", [
    ({"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": "lots"}, "dispatch.max_in_flight: expected int"),
    ({"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": "0"}, "out of range"),
    ({"SMS_CONNECTOR_KAFKA__SECURITY_PROTOCOL": "TLS"}, "not one of PLAINTEXT"),
    ({"SMS_CONNECTOR_KAFKA__NOPE": "1"}, "kafka.nope: unknown setting"),
    ({"SMS_CONNECTOR_NOPE__X": "1"}, "nope: unknown section"),
    ({"SMS_CONNECTOR_ROUTES__A__PROVIDER": "carrier-pigeon"}, "is not a provider"),
    ({"SMS_CONNECTOR_ROUTES__SMPP__PROVIDER": "smpp_rest"}, "routes.smpp.base_url: required"),
    ({**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "env:NOT_SET_ANYWHERE"}, "NOT_SET_ANYWHERE, which is not set"),
    ({**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__CONCURRENCY": "-1"}, "routes.smpp.concurrency"),
    ({**SMPP, "SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "nope"}, "unknown route 'nope'"),
    ({**SMPP, "SMS_CONNECTOR_ROUTING__PREFIX_ROUTES": "+1"}, "is not PREFIX=ROUTE"),
])
def test_problems_are_reported_with_their_path(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(environ=env)
    assert fragment in str(err.value)


def test_secret_references(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("from-file\n")
    s = load(environ={**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": f"file:{f}"})
    assert s.routes["smpp"].provider.api_key.value == "from-file"
    s = load(environ={**SMPP, "SMS_CONNECTOR_ROUTES__SMPP__API_KEY": "env:MY_KEY", "MY_KEY": "from-env"})
    assert s.routes["smpp"].provider.api_key.value == "from-env"


def test_secrets_never_print() -> None:
    s = load(environ=SMPP)
    assert "k-secret-1" not in repr(s) and "k-secret-1" not in str(redacted(s))


def test_every_setting_is_documented() -> None:
    docs = describe()
    assert docs and all(d.doc for d in docs)
    assert any(d.env == "SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS" for d in docs)


def test_kubernetes_service_links_are_not_settings() -> None:
    s = load(environ={"SMS_CONNECTOR_CALLBACKS_PORT": "tcp://10.0.0.1:8080",
                      "SMS_CONNECTOR_CALLBACKS_SERVICE_HOST": "10.0.0.1",
                      "SMS_CONNECTOR_CALLBACKS_PORT_8080_TCP_ADDR": "10.0.0.1"})
    assert s.callbacks.max_body_bytes == 65536


def test_a_single_underscore_typo_is_still_reported() -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        load(environ={"SMS_CONNECTOR_KAFKA_BOOTSTRAP_SERVERS": "x:9092"})
