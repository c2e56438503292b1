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


def test_config_is_a_leaf_importing_nothing_of_ours() -> None:
    # config and providers used to import each other (hidden by a lazy import): providers now
    # register their route settings with config, which knows only the kit.
    import ast
    from pathlib import Path

    import connector.config as config

    ours = []
    for module in Path(config.__file__).parent.glob("*.py"):
        for n in ast.walk(ast.parse(module.read_text())):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                ours += [(module.name, name) for name in names
                         if name.startswith("connector") and not name.startswith("connector.config")]
    assert ours == []


def test_every_provider_registers_its_route_settings() -> None:
    from connector.config import registered_providers
    from connector.providers import REGISTRY

    assert {name: p.Config for name, p in REGISTRY.items()} == dict(registered_providers())


def test_load_detailed_says_where_each_value_came_from(tmp_path: Path) -> None:
    from connector.config import load_detailed

    cfg = tmp_path / "c.toml"
    cfg.write_text('[kafka]\nlinger_ms = 20\nclient_id = "from-file"\n')
    env = {"SMS_CONNECTOR_KAFKA__CLIENT_ID": "from-env", "SMS_CONNECTOR_ROUTES__GW__PROVIDER": "smpp_rest",
           "SMS_CONNECTOR_ROUTES__GW__BASE_URL": "https://gw", "SMS_CONNECTOR_ROUTES__GW__API_KEY": "k"}
    loaded = load_detailed(cfg, env, overrides={"http": {"port": 9}})
    assert loaded.problems == () and loaded.settings is not None
    assert loaded.settings.kafka.client_id == "from-env"
    s = loaded.sources
    assert (s["kafka.linger_ms"], s["kafka.client_id"], s["kafka.group_id"]) == ("file", "env", "default")
    assert (s["routes.gw.base_url"], s["routes.gw.concurrency"], s["http.port"]) == ("env", "default", "override")
    # a running dev's environment (no config file): "manifest", unless the process's own variable wins
    under = {"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", "SMS_CONNECTOR_KAFKA__CLIENT_ID": "dev"}
    loaded = load_detailed(None, {"SMS_CONNECTOR_KAFKA__CLIENT_ID": "mine"}, under=under)
    assert loaded.settings is not None and loaded.settings.kafka.client_id == "mine"
    assert (loaded.sources["kafka.bootstrap_servers"], loaded.sources["kafka.client_id"]) == ("manifest", "env")


def test_problems_are_structured_with_path_message_and_fix() -> None:
    from connector.config import Problem, load_detailed

    loaded = load_detailed(None, {"SMS_CONNECTOR_LOG__LEVEL": "LOUD", "SMS_CONNECTOR_HTTP__PORT": "x"})
    assert loaded.settings is None and loaded.sources == {}
    assert set(loaded.problems) == {
        Problem("log.level", "'LOUD' is not one of DEBUG, INFO, WARNING, ERROR",
                "set log.level to one of: DEBUG, INFO, WARNING, ERROR"),
        Problem("http.port", "expected int, got 'x'",
                "give http.port a value of type int (config file or SMS_CONNECTOR_HTTP__PORT)"),
    }
    with pytest.raises(ConfigError) as exc:
        load(None, {"SMS_CONNECTOR_LOG__LEVEL": "LOUD"})
    assert str(exc.value) == "invalid configuration:\n  - log.level: 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"
