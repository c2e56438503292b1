"""Walking the XML trees provider answers are parsed into, namespaces ignored.

Providers' documents qualify elements with namespaces that vary between samples (Rev.io's SMS_Send
answers in ``http://api.myh2o.com/`` or ``.../v20``; the SMPP gateway's XML in ServiceStack's), so
adapters and their simulators look elements up by local name only.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element


def local_name(tag: Any) -> str:
    """``{namespace}Name`` -> ``Name``; "" for what is not an element's tag (comments, PIs)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def find_child(el: Element | None, name: str) -> Element | None:
    """The first child of ``el`` whose local name is ``name``."""
    if el is None:
        return None
    return next((c for c in el if local_name(c.tag) == name), None)
