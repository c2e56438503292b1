"""Loading: the TOML file, a running dev's environment, the process environment and overrides,
layered; every section and route built and checked; where each value came from; the reference
documentation of every setting (``describe``) and a redacted view (``redacted``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass
from datetime import time as dt_time
from pathlib import Path
from typing import Any, Mapping

from connector.config.kit import (
    _PROVIDER_SETTINGS,
    ENV_PREFIX,
    ConfigError,
    Problem,
    Problems,
    Secret,
    _base_type,
    _env_tree,
    _merge,
    build,
)
from connector.config.sections import NUMBER_TYPES, REGION_CODES, SECTIONS, Route, RouteSettings, Settings


@dataclass(frozen=True)
class Loaded:
    """What loading found: the settings (None when there are problems), where each setting path's
    value came from (``default``, ``file``, ``manifest``: a running dev's environment, ``env`` or
    ``override``), and every problem."""

    settings: Settings | None
    sources: Mapping[str, str]
    problems: tuple[Problem, ...]


def _origins(tree: Mapping[str, Any], source: str, prefix: str, out: dict[str, str]) -> None:
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            _origins(v, source, path, out)
        else:
            out[path] = source


def load(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None, under: Mapping[str, str] | None = None) -> Settings:
    """Load and validate settings; raises ConfigError listing every problem (see ``load_detailed``)."""
    loaded = load_detailed(config_file, environ, overrides, under)
    if loaded.problems:
        raise ConfigError(list(loaded.problems))
    assert loaded.settings is not None
    return loaded.settings


def load_detailed(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None, under: Mapping[str, str] | None = None) -> Loaded:
    """Load and validate settings, saying where each value came from and what is wrong.

    ``under``: variables the environment overrides, used only when there is no config file (the
    operator commands pass a running ``dev``'s, from its manifest)."""
    environ = process_env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if under and not config_file:
        layers.append(("manifest", _env_tree(under)))
        environ = {**under, **environ}
    problems: Problems = []
    if config_file:
        where = f"config file {config_file}"
        try:
            layers.insert(0, ("file", tomllib.loads(Path(config_file).read_text())))
        except OSError as exc:
            return Loaded(None, {}, (Problem(where, str(exc.strerror),
                                             "check the path given with --config or SMS_CONNECTOR_CONFIG"),))
        except tomllib.TOMLDecodeError as exc:
            return Loaded(None, {}, (Problem(where, f"not valid TOML: {exc}", "fix the TOML syntax at the position shown"),))
    layers.append(("env", _env_tree(process_env)))
    if overrides:
        layers.append(("override", overrides))
    origin: dict[str, str] = {}
    for source, tree in layers:
        raw = _merge(raw, tree)
        _origins(tree, source, "", origin)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = raw.pop(name, {})
        if not isinstance(section, Mapping):
            problems.append(_not_a_table(name))
            section = {}
        sections[name] = build(cls, section, name, problems, environ)
    routes_raw = raw.pop("routes", {})
    for unknown in sorted(raw):
        known = ", ".join([*SECTIONS, "routes"])
        problems.append(Problem(unknown, f"unknown section (known: {known})",
                                f"remove the [{unknown}] section or correct its name (known: {known})"))
    routes = {name: _build_route(name, r, problems, environ) for name, r in routes_raw.items()}
    settings = None
    if not problems:
        settings = Settings(**sections, routes=routes)
        _check_routing(settings, problems)
        _check_destinations(settings, problems)
    if problems:
        return Loaded(None, {}, tuple(problems))
    assert settings is not None
    return Loaded(settings, _sources(settings, origin), ())


def _sources(settings: Settings, origin: Mapping[str, str]) -> dict[str, str]:
    """Setting path -> where its value came from, for every field of ``settings``."""
    objects: list[tuple[str, Any]] = [(name, getattr(settings, name)) for name in SECTIONS]
    for name, route in settings.routes.items():
        objects += [(f"routes.{name}", route.common), (f"routes.{name}", route.provider)]
    return {f"{prefix}.{f.name}": origin.get(f"{prefix}.{f.name}", "default")
            for prefix, obj in objects for f in dataclasses.fields(obj)}


def _not_a_table(path: str) -> Problem:
    return Problem(path, "expected a table of settings", f"make {path} a TOML table ([{path}]) of settings")


def _build_route(name: str, raw: Any, problems: Problems, environ: Mapping[str, str]) -> Route | None:
    path = f"routes.{name}"
    if not isinstance(raw, Mapping):
        problems.append(_not_a_table(path))
        return None
    raw = dict(raw)
    provider_name = raw.get("provider")
    if provider_name not in _PROVIDER_SETTINGS:
        known = ", ".join(sorted(_PROVIDER_SETTINGS))
        problems.append(Problem(f"{path}.provider", f"{provider_name!r} is not a provider (known: {known})",
                                f"set {path}.provider to one of: {known}"))
        return None
    common_names = {f.name for f in dataclasses.fields(RouteSettings)}
    common = build(RouteSettings, {k: v for k, v in raw.items() if k in common_names}, path, problems, environ)
    provider_cls = _PROVIDER_SETTINGS[provider_name]
    specific = build(provider_cls, {k: v for k, v in raw.items() if k not in common_names}, path, problems,
                     environ)
    return Route(name=name, common=common, provider=specific)


def _check_routing(settings: Settings, problems: Problems) -> None:
    routes = settings.routes
    r = settings.routing
    configured = ", ".join(routes) or "none"
    for label, value in (("routing.default_route", r.default_route), ("routing.device_route", r.device_route)):
        if value and value not in routes:
            problems.append(Problem(label, f"unknown route {value!r} (configured: {configured})",
                                    f"add a [routes.{value}] section, or set {label} to one of the configured "
                                    f"routes: {configured}"))
    for prefix, route in parse_prefix_routes(r.prefix_routes, problems):
        if route not in routes:
            problems.append(Problem("routing.prefix_routes", f"{prefix}={route}: unknown route {route!r}",
                                    f"add a [routes.{route}] section, or change the rule {prefix}={route} in "
                                    f"routing.prefix_routes"))
    for name, route in routes.items():
        try:
            parse_quiet_hours(route.common.quiet_hours)
        except ValueError as exc:
            problems.append(Problem(f"routes.{name}.quiet_hours", str(exc),
                                    f"set routes.{name}.quiet_hours to {QUIET_HOURS_FORM}, or empty"))
    for name, route in routes.items():
        failover = route.common.failover_route
        if failover and (failover not in routes or failover == name):
            path = f"routes.{name}.failover_route"
            problems.append(Problem(path, f"{failover!r} is not another configured route (configured: "
                                          f"{', '.join(routes)})", f"correct {path}"))
    for name, route in routes.items():
        try:
            parse_region_budgets(route.common.budget_regions)
        except ValueError as exc:
            path = f"routes.{name}.budget_regions"
            problems.append(Problem(path, str(exc), f"write {path} as REGION=PER_HOUR/PER_DAY,... e.g. NG=100/1000"))


def parse_region_budgets(text: str) -> dict[str, tuple[int, int]]:
    """``"NG=100/1000,GH=50/0"`` -> {region: (per hour, per day)}; 0 = no such budget. Raises ValueError."""
    found: dict[str, tuple[int, int]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        region, sep, figures = part.partition("=")
        hour, slash, day = figures.partition("/")
        region = region.strip().upper()
        if not sep or not slash or len(region) != 2 or not region.isalpha():
            raise ValueError(f"{part!r}: expected REGION=PER_HOUR/PER_DAY, e.g. NG=100/1000")
        try:
            per_hour, per_day = int(hour), int(day)
        except ValueError:
            raise ValueError(f"{part!r}: the budgets must be whole numbers of segments") from None
        if per_hour < 0 or per_day < 0:
            raise ValueError(f"{part!r}: budgets cannot be negative")
        found[region] = (per_hour, per_day)
    return found


def region_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of region codes, upper-cased (``allow_regions`` / ``block_regions``)."""
    return tuple(dict.fromkeys(p.strip().upper() for p in text.split(",") if p.strip()))


def number_type_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of number types, lower-cased, ``_`` read as ``-`` (``fixed_line``
    is ``fixed-line``)."""
    return tuple(dict.fromkeys(p.strip().lower().replace("_", "-") for p in text.split(",") if p.strip()))


def _check_destinations(settings: Settings, problems: Problems) -> None:
    """Every region code and number type of the routes' destination rules is one libphonenumber
    knows: a typo would otherwise block (or let through) a whole country silently."""
    for name, route in settings.routes.items():
        c = route.common
        for field_name, values, known, what in (
                ("allow_regions", region_list(c.allow_regions), REGION_CODES, "an ISO 3166-1 alpha-2 region code"),
                ("block_regions", region_list(c.block_regions), REGION_CODES, "an ISO 3166-1 alpha-2 region code"),
                ("allow_number_types", number_type_list(c.allow_number_types), NUMBER_TYPES, "a number type"),
                ("block_number_types", number_type_list(c.block_number_types), NUMBER_TYPES, "a number type")):
            path = f"routes.{name}.{field_name}"
            for value in values:
                if value not in known:
                    hint = (f"one of: {', '.join(NUMBER_TYPES)}" if known is NUMBER_TYPES else
                            "the United Kingdom's ISO code is GB" if value == "UK" else
                            "a two-letter ISO 3166-1 code with a telephone numbering plan, e.g. US, GB, DE")
                    problems.append(Problem(path, f"{value!r} is not {what} libphonenumber knows",
                                            f"correct {value!r} in {path} ({hint})"))
_WALL_TIME = r"([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?"      # HH:MM, or HH:MM:SS
_QUIET_HOURS = re.compile(rf"^\s*{_WALL_TIME}\s*-\s*{_WALL_TIME}\s*$")
QUIET_HOURS_FORM = "HH:MM-HH:MM (24-hour local time; either end may be HH:MM:SS), e.g. 21:00-08:00"


def parse_quiet_hours(text: str) -> tuple[dt_time, dt_time] | None:
    """A route's ``quiet_hours`` (``"21:00-08:00"``, either end may carry seconds:
    ``"21:00-08:00:30"``) -> (start, end) local wall times; ``""`` -> None; ValueError for anything
    else (``connector.schedule`` does the arithmetic)."""
    if not text or not text.strip():
        return None
    m = _QUIET_HOURS.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not {QUIET_HOURS_FORM}")
    h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in m.groups())
    return dt_time(h1, m1, s1), dt_time(h2, m2, s2)


def parse_prefix_routes(text: str, problems: Problems | None = None) -> list[tuple[str, str]]:
    rules: list[tuple[str, str]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        prefix, sep, route = item.partition("=")
        if not sep or not prefix.strip() or not route.strip():
            if problems is not None:
                problems.append(Problem("routing.prefix_routes", f"{item!r} is not PREFIX=ROUTE",
                                        "write routing.prefix_routes as PREFIX=ROUTE rules separated by commas, "
                                        "e.g. +1=revio,+58=ogangi"))
            continue
        rules.append((prefix.strip(), route.strip()))
    return rules


# --------------------------------------------------------------------------------------------
# Documentation


@dataclass(frozen=True)
class SettingDoc:
    path: str
    env: str
    type: str
    default: str
    doc: str
    secret: bool


def describe() -> list[SettingDoc]:
    """Every documented setting (the README reference, ``worker --help`` and ``check``), provider
    route settings included for the providers registered (``import connector.providers``)."""

    docs: list[SettingDoc] = []

    def add(cls: type, path: str, env: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = "" if f.default in (dataclasses.MISSING, None) else str(f.default)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                default = "(required)"
            hint = _base_type(hints[f.name])
            doc = meta.get("doc", "")
            if meta.get("choices"):
                doc += f" One of: {', '.join(meta['choices'])}."
            docs.append(SettingDoc(f"{path}.{f.name}", f"{env}__{f.name.upper()}",
                                   "secret" if meta.get("secret") else hint.__name__, default, doc,
                                   bool(meta.get("secret"))))

    for name, cls in SECTIONS.items():
        add(cls, name, f"{ENV_PREFIX}{name.upper()}")
    add(RouteSettings, "routes.<name>", f"{ENV_PREFIX}ROUTES__<NAME>")
    for pname, cls in sorted(_PROVIDER_SETTINGS.items()):
        add(cls, f"routes.<name> (provider={pname})", f"{ENV_PREFIX}ROUTES__<NAME>")
    return docs


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as a plain dict with secrets shown as ``***`` (or their reference)."""

    def conv(obj: Any) -> Any:
        if isinstance(obj, Secret):
            return "***" if obj.source == "literal" else f"*** ({obj.source})"
        if dataclasses.is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Mapping):
            return {k: conv(v) for k, v in obj.items()}
        return obj

    return conv(settings)
