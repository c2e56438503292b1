"""logs: secrets never reach a log line, not even inside a traceback."""

from __future__ import annotations

import io
import logging

import pytest

from connector import logs


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_are_redacted_in_messages_extras_and_tracebacks(fmt: str) -> None:
    out = io.StringIO()
    logs.configure("INFO", fmt, ["topsecret-value"], stream=out)
    log = logging.getLogger("sms_connector.test")
    try:
        log.info("token topsecret-value", extra={"detail": "x topsecret-value"})
        try:
            raise RuntimeError("boom topsecret-value")
        except RuntimeError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers[:] = []
    text = out.getvalue()
    assert "topsecret-value" not in text
    assert text.count("***") >= 3 and "RuntimeError" in text
