"""The README's reference sections are generated from the code; they must be up to date."""

from __future__ import annotations

from connector.devtools import docs


def test_readme_reference_sections_are_current() -> None:
    text = docs.README.read_text()
    assert docs.render(text) == text, "README is out of date: run `make docs`"


def test_readme_documents_every_topic_and_setting() -> None:
    text = docs.README.read_text()
    for name in ("sms.outbound", "sms.outbound.accepted", "sms.outbound.failed", "sms.outbound.dlq",
                 "SMS_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "sms_outbound_failed_total"):
        assert name in text
