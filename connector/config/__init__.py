"""The one package that reads configuration: environment variables and an optional TOML file.

A leaf: it imports nothing of ours outside itself. ``kit`` is the settings kit, ``sections`` the
worker's own sections, ``loading`` the layering, checks and documentation. Every setting is a dataclass field declared with ``setting()``
(type, default, description, example, whether it is a secret). The same declarations produce
validation, ``worker --help``, ``check``'s table and the README reference, so documentation cannot
drift from behaviour. A provider declares its route
settings next to its code and registers them with ``@provider_settings(name)``, so this package
knows no provider (``connector.providers`` registers all of them when imported).

``load_detailed`` returns the settings, where each value came from (``default`` / ``file`` /
``manifest`` / ``env`` / ``override``) and every problem as a ``Problem`` (path, message, fix);
``load`` raises ``ConfigError`` carrying those problems.

Sources, later wins: defaults < TOML file (``--config`` or ``SMS_CONNECTOR_CONFIG``) < a running dev's
environment (``manifest``: operator commands without a config file) < environment < overrides.
Environment names are ``SMS_CONNECTOR_<SECTION>__<FIELD>``, e.g. ``SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS``;
routes are ``SMS_CONNECTOR_ROUTES__<ROUTE>__<FIELD>``. A secret's value may be a reference,
``env:NAME`` or ``file:/path`` (a mounted Kubernetes Secret), resolved at load; secrets are
``Secret`` objects that print as ``***``.
"""

from __future__ import annotations

from connector.config.kit import (
    ENV_PREFIX,
    ConfigError,
    Problem,
    Secret,
    build,
    env_name,
    provider_settings,
    registered_providers,
    setting,
)
from connector.config.loading import (Loaded, SettingDoc, describe, load, load_detailed, number_type_list,
                                      parse_prefix_routes, parse_region_budgets, redacted, region_list)
from connector.config.sections import (
    NUMBER_TYPES,
    REGION_CODES,
    SECTIONS,
    CallbacksSettings,
    DispatchSettings,
    HttpSettings,
    InboundSettings,
    KafkaSettings,
    LogSettings,
    Route,
    RouteSettings,
    RoutingSettings,
    Settings,
    TracingSettings,
)

__all__ = [
    "ENV_PREFIX", "SECTIONS", "CallbacksSettings", "ConfigError", "DispatchSettings", "HttpSettings",
    "InboundSettings", "KafkaSettings", "Loaded", "LogSettings", "Problem", "Route", "RouteSettings",
    "RoutingSettings", "Secret", "SettingDoc", "Settings", "TracingSettings", "build", "describe", "env_name",
    "load", "load_detailed", "parse_prefix_routes", "parse_region_budgets", "provider_settings", "redacted", "registered_providers",
    "setting",
    "NUMBER_TYPES", "REGION_CODES", "number_type_list", "region_list",
]
