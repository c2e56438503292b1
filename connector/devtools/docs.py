"""Reference sections of the README, generated from the code: settings, topics, records, metrics.

``python -m connector.devtools.docs`` rewrites the blocks between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` in README.md; a unit test fails when the README is out of date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from connector import contract as topics
from connector.config import describe

README = Path(__file__).resolve().parents[2] / "README.md"


def settings_table() -> str:
    rows = ["| setting | environment variable | type | default | description |", "|---|---|---|---|---|"]
    for d in describe():
        rows.append(f"| `{d.path}` | `{d.env}` | {d.type} | {('`' + d.default + '`') if d.default else ''} | "
                    f"{d.doc.replace('|', '/')} |")
    return "\n".join(rows)


def topics_table() -> str:
    rows = ["| role | topic | partitions | retention | cleanup | key | record |", "|---|---|---|---|---|---|---|"]
    for s in topics.specs().values():
        retention = "forever" if s.retention_ms < 0 else f"{s.retention_ms / 86_400_000:g} d"
        key = s.key.replace("|", "\\|")     # a literal | inside a table cell
        rows.append(f"| {s.role} | `{s.name}` | {s.partitions} | {retention} | {s.cleanup_policy} | {key} | "
                    f"{('`' + s.schema + '`') if s.schema else 'original bytes'} |")
    return "\n".join(rows)


def _type(p: dict[str, Any]) -> str:
    if "const" in p:
        return f"const `{p['const']}`"
    if "enum" in p:
        return "one of " + ", ".join(f"`{v}`" for v in p["enum"] if v is not None)
    if "oneOf" in p:
        return "object (see description)"
    t = p.get("type", "")
    return " or ".join(t) if isinstance(t, list) else str(t)


def records_reference() -> str:
    out: list[str] = []
    for spec in topics.specs().values():
        if not spec.schema:
            continue
        schema = topics.schema(spec.schema)
        out.append(f"#### `{schema['title']}` (`topics/schemas/{spec.schema}`, topic `{spec.name}`)\n")
        out.append(schema.get("description", "") + "\n")
        out.append("| field | type | required | description |\n|---|---|---|---|")
        required = set(schema.get("required", ()))
        for name, p in schema["properties"].items():
            desc = p.get("description", "").replace("|", "/")
            out.append(f"| `{name}` | {_type(p)} | {'yes' if name in required else ''} | {desc} |")
        out.append("")
    out.append("Dead-letter records (`sms.outbound.dlq`) keep the input's key, value and headers untouched and add "
               f"`{topics.HEADER_ERROR_REASON}`, `{topics.HEADER_ERROR_MESSAGE}`, `{topics.HEADER_ERROR_FIELD}` "
               f"(when one field is at fault) and `{topics.HEADER_ERROR_AT}`. Every output record carries "
               f"`{topics.HEADER_SOURCE_TOPIC}`, `{topics.HEADER_SOURCE_PARTITION}` and "
               f"`{topics.HEADER_SOURCE_OFFSET}`.")
    return "\n".join(out)


def metrics_table() -> str:
    from prometheus_client import REGISTRY

    import connector.metrics  # noqa: F401 - registers the metrics

    rows = ["| metric | type | labels | description |", "|---|---|---|---|"]
    for family in sorted(REGISTRY.collect(), key=lambda m: m.name):
        if not family.name.startswith("sms_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        collector = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - label names without samples
        labels |= set(getattr(collector, "_labelnames", ()))
        rows.append(f"| `{name}` | {family.type} | {', '.join(sorted(labels))} | {family.documentation} |")
    return "\n".join(rows)


def lookalikes_table() -> str:
    """Smart encoding's table (``connector.encoding.LOOKALIKES``), grouped by what is sent."""
    import unicodedata

    from connector.encoding import LOOKALIKES

    groups: dict[str, list[str]] = {}
    for ch, sent in LOOKALIKES.items():
        shown = "`` ` `` " if ch == "`" else f"`{ch}` " if ch.isprintable() and not ch.isspace() else ""
        name = unicodedata.name(ch, "character tabulation" if ch == "\t" else "control").lower()
        groups.setdefault(sent, []).append(f"{shown}U+{ord(ch):04X} {name}")
    rows = ["| sent as | instead of |", "|---|---|"]
    for sent, chars in groups.items():
        label = {"": "(nothing)", " ": "a space", "\n": "a line feed"}.get(sent, f"`{sent}`")
        rows.append(f"| {label} | {', '.join(chars).replace('|', '/')} |")
    return "\n".join(rows)


SECTIONS = {"settings": settings_table, "topics": topics_table, "records": records_reference, "metrics": metrics_table,
            "lookalikes": lookalikes_table}


def render(text: str) -> str:
    for name, fn in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + fn() + "\n" + m.group(2), text)
    return text


def main() -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        return 0 if new == text else 1
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
