"""The dev manifest, ``.sms-connector-dev.json``: what a running ``sms-connector dev`` says about
itself, and how the operator commands find it.

``dev`` writes its process id, broker, topics, URLs, simulators and the environment its worker
runs with. An operator command (send, topics, status, dlq replay, check) run in the same
directory without ``--config`` configures itself from that environment, under the process's own
``SMS_CONNECTOR_*`` variables (which still win), and says so once on stderr. A manifest whose
``dev`` process is gone (killed before it could remove it) is ignored, with a note.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import click
import orjson

from connector.config import ConfigError, Settings, load

DEFAULT_PATH = ".sms-connector-dev.json"

_said: set[str] = set()          # notices already printed by this process
_used: dict[str, Any] = {}       # the manifest this process configured itself from, if any


def notice(text: str) -> None:
    """Print a note for the user on stderr, once per process."""
    if text not in _said:
        _said.add(text)
        click.echo(f"note: {text}", err=True)


def write(path: str | Path, data: Mapping[str, Any]) -> Path:
    p = Path(path)
    p.write_bytes(orjson.dumps({"pid": os.getpid(), **data}, option=orjson.OPT_INDENT_2))
    return p


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True        # no pid recorded: cannot tell, trust the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(path: str | Path = DEFAULT_PATH) -> dict[str, Any] | None:
    """The manifest of a running ``dev``, or None (no file, or its process is gone)."""
    p = Path(path)
    try:
        data = orjson.loads(p.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"{p}: not a dev manifest ({exc})") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{p}: not a dev manifest (not a JSON object)")
    if not _alive(data.get("pid")):
        notice(f"ignoring {p}: the dev process that wrote it ({data['pid']}) is gone; delete the file")
        return None
    return data


def environment(data: Mapping[str, Any]) -> dict[str, str]:
    """The worker's environment from a manifest (older manifests: just their broker)."""
    env = data.get("environment")
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    return {"SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": str(data.get("bootstrap_servers", "")),
            "SMS_CONNECTOR_KAFKA__IDEMPOTENT_PRODUCER": "false", "SMS_CONNECTOR_KAFKA__EXACTLY_ONCE": "false"}


def dev_environment(config: str | None, path: str | Path = DEFAULT_PATH) -> dict[str, str] | None:
    """A running ``dev``'s worker environment when ``config`` is not given (announced once)."""
    if config:
        return None
    data = read(path)
    if data is None:
        return None
    _used.clear()
    _used.update(data, path=str(path))
    notice(f"using the running `sms-connector dev` of {path} (broker {data.get('bootstrap_servers')}); "
           f"--config or SMS_CONNECTOR_* variables override it")
    return environment(data)


def settings(config: str | None, path: str | Path = DEFAULT_PATH) -> Settings:
    """Settings for an operator command: ``config`` (or the environment), else a running dev's."""
    try:
        return load(config, under=dev_environment(config, path))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def kafka_hint() -> str:
    """What to do when Kafka cannot be reached, depending on where its address came from."""
    if _used:
        return (f"the dev manifest {_used['path']} points at {_used.get('bootstrap_servers')}: is "
                f"`sms-connector dev` still running?")
    return ("set kafka.bootstrap_servers (--config or SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS), or run this "
            f"where `sms-connector dev` runs (it writes {DEFAULT_PATH})")


def kafka_error(exc: BaseException) -> click.ClickException | None:
    """One line for an error that means Kafka could not be used, with what to do; else None."""
    from connector.kafka import TopicMissing, failure_line

    line = failure_line(exc)
    if line is None or isinstance(exc, TopicMissing):     # a missing topic's line says what to do
        return None if line is None else click.ClickException(line)
    return click.ClickException(f"{line.rstrip('.')}. Fix: {kafka_hint()}")


def reset() -> None:
    """Forget what this process used and said (tests run several commands in one process)."""
    _said.clear()
    _used.clear()
