"""The settings kit: ``setting()`` (a documented dataclass field), ``Secret``, ``Problem`` and
``ConfigError``, coercion and validation of one settings dataclass from raw values (``build``),
the environment-variable tree, and the registry of provider route settings
(``@provider_settings(name)``). Imports nothing of ours.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

ENV_PREFIX = "SMS_CONNECTOR_"


def env_name(path: str) -> str:
    """The environment variable of a setting path: ``routes.smpp.api_key`` ->
    ``SMS_CONNECTOR_ROUTES__SMPP__API_KEY``."""
    return ENV_PREFIX + "__".join(p.upper() for p in path.split("."))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: where (a setting path, a section, or ``config file
    PATH``), what, and what to do about it."""

    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(ValueError):
    """Configuration is invalid. ``problems`` lists every problem found, each with its path and fix."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(map(str, problems)))
        self.problems = problems


Problems = list[Problem]


class Secret:
    """A secret value: usable via ``.value``, never printed."""

    __slots__ = ("value", "source")

    def __init__(self, value: str, source: str = "literal") -> None:
        self.value = value
        self.source = source  # "literal", "env:NAME" or "file:/path": safe to show

    def __repr__(self) -> str:
        return "Secret(***)" if self.source == "literal" else f"Secret(*** from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def setting(default: Any = dataclasses.MISSING, *, doc: str, example: str | None = None,
            secret: bool = False, choices: tuple[str, ...] | None = None,
            minimum: float | None = None, maximum: float | None = None) -> Any:
    """Declare one documented setting (a dataclass field)."""
    meta = {"doc": doc, "example": example, "secret": secret, "choices": choices,
            "minimum": minimum, "maximum": maximum}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


_PROVIDER_SETTINGS: dict[str, type] = {}
_T = TypeVar("_T", bound=type)


def provider_settings(name: str) -> Callable[[_T], _T]:
    """Class decorator: ``cls`` declares the route settings of provider ``name`` (a route with
    ``provider = name`` is validated against it). The provider's module applies it."""

    def register(cls: _T) -> _T:
        _PROVIDER_SETTINGS[name] = cls
        return cls

    return register


def registered_providers() -> Mapping[str, type]:
    """Provider name -> its route settings class, for every provider registered so far."""
    return MappingProxyType(_PROVIDER_SETTINGS)


def _resolve_secret(raw: Any, path: str, problems: Problems, environ: Mapping[str, str]) -> Secret | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, Secret):
        return raw
    text = str(raw)
    if text.startswith("env:"):
        name = text[4:]
        if name not in environ:
            problems.append(Problem(path, f"refers to environment variable {name}, which is not set",
                                    f"set {name} in the connector's environment (e.g. from a Kubernetes "
                                    f"Secret), or point {path} at another env:NAME or file:/path"))
            return None
        return Secret(environ[name], source=text)
    if text.startswith("file:"):
        p = Path(text[5:])
        try:
            return Secret(p.read_text().strip(), source=text)
        except OSError as exc:
            problems.append(Problem(path, f"cannot read secret file {p}: {exc.strerror}",
                                    f"mount the secret at {p} (and make it readable), or correct {path}"))
            return None
    return Secret(text)


def _coerce(f: dataclasses.Field[Any], hint: Any, raw: Any, path: str, problems: Problems,
            environ: Mapping[str, str]) -> Any:
    meta = f.metadata
    if meta.get("secret"):
        return _resolve_secret(raw, path, problems, environ)
    base = _base_type(hint)
    try:
        if base is bool:
            if isinstance(raw, bool):
                value: Any = raw
            elif str(raw).lower() in ("1", "true", "yes", "on"):
                value = True
            elif str(raw).lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError
        elif base is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw)
        elif base is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        else:
            value = str(raw)
    except (TypeError, ValueError):
        problems.append(Problem(path, f"expected {base.__name__}, got {raw!r}",
                                f"give {path} a value of type {base.__name__} (config file or {env_name(path)})"))
        return None
    choices = meta.get("choices")
    if choices and value not in choices:
        problems.append(Problem(path, f"{value!r} is not one of {', '.join(choices)}",
                                f"set {path} to one of: {', '.join(choices)}"))
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and value < lo or hi is not None and value > hi:
        bound = (f"between {lo} and {hi}" if lo is not None and hi is not None else
                 f"of at least {lo}" if lo is not None else f"of at most {hi}")
        problems.append(Problem(path, f"{value!r} is out of range [{lo}, {hi}]", f"set {path} to a value {bound}"))
    return value


def _base_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if args else str
    return hint if isinstance(hint, type) else str


def build(cls: type, raw: Mapping[str, Any], path: str, problems: Problems,
          environ: Mapping[str, str] = os.environ) -> Any:
    """Construct settings dataclass ``cls`` from a raw mapping, collecting problems."""
    raw = dict(raw)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(f, hints[f.name], raw.pop(f.name), f"{path}.{f.name}", problems, environ)
            if f.name.endswith("_url") and isinstance(kwargs[f.name], str):
                _check_url(kwargs[f.name], f"{path}.{f.name}", problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            doc = f.metadata.get("doc", "")
            problems.append(Problem(f"{path}.{f.name}", f"required ({doc})",
                                    f"set {path}.{f.name} in the config file or {env_name(f'{path}.{f.name}')}"
                                    + (f" ({doc})" if doc else "")))
    for unknown in sorted(raw):
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        problems.append(Problem(f"{path}.{unknown}", f"unknown setting (known: {known})",
                                f"remove {path}.{unknown} or correct its spelling (known here: {known})"))
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None or _nullable(cls, k)})
    except TypeError:
        return None


def _check_url(value: str, path: str, problems: Problems) -> None:
    """A ``*_url`` setting (a provider's base_url, callbacks.public_url) is an http(s) URL with a host:
    the HTTP client would refuse anything else only at the first call, as a retriable error."""
    if not value:
        return
    fix = f"set {path} to an http:// or https:// URL with a host, e.g. https://api.example.com"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        problems.append(Problem(path, f"{value!r} is not an http:// or https:// URL", fix))
    elif not rest.split("/", 1)[0].rpartition("@")[2]:
        problems.append(Problem(path, f"{value!r} has no host", fix))


def _nullable(cls: type, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.metadata.get("secret", False)


# Kubernetes injects <SERVICE>_PORT / _SERVICE_HOST / ... for every Service in the namespace; a
# Service named "sms-connector-callbacks" yields SMS_CONNECTOR_CALLBACKS_PORT. Not settings.
_SERVICE_LINK = re.compile(r"^SMS_CONNECTOR_[A-Z0-9_]*?_(PORT|SERVICE_HOST|SERVICE_PORT\w*|PORT_\d+_\w+)$")


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        if "__" not in key and _SERVICE_LINK.match(key):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out
