"""Operator commands, run by people against a deployment: ``check`` (config, topics, providers),
``status`` (a live view from metrics and offsets: ``status``, ``snapshot``, ``kafka_probe``),
``dlq replay`` (``replay``), ``send`` / ``topics tail`` (``tools``), provider one-offs such as
ThingSpace callback registration (``operations``), and the dev manifest they read to find a running
``sms-connector dev`` (``devmanifest``). They use the worker's modules (config, kafka, records,
providers); the worker never imports them.
"""

from __future__ import annotations

import logging

import connector.providers  # noqa: F401  the operator commands load routes: each provider registers its settings


def quiet_client_logs() -> None:
    """aiokafka logs each refused connection through logging's last-resort handler (stderr) when
    logging is not configured; the commands' own report already says it. Commands call this, not
    the library."""
    for name in ("aiokafka", "kafka"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
