"""Tiny pure helpers for the few things we read out of raw SIP text."""

from __future__ import annotations

import re

_URI_USER = re.compile(r"^(?:sips?|tel):(?:([^@>?]*)@)?", re.IGNORECASE)


def request_uri(message: str) -> str:
    """The Request-URI of a SIP request ('' if the first line is not a request line)."""
    first = message.split("\r\n", 1)[0].split("\n", 1)[0]
    parts = first.split()
    if len(parts) == 3 and parts[2].upper().startswith("SIP/"):
        return parts[1]
    return ""


def uri_user(uri: str) -> str:
    """The user part of a SIP URI, accepting name-addr form ("Bob" <sip:bob@x>;tag=1)."""
    lt = uri.find("<")
    if lt >= 0:
        uri = uri[lt + 1 : uri.find(">", lt) if ">" in uri[lt:] else None]
    m = _URI_USER.match(uri.strip())
    if not m:
        return ""
    user = m.group(1) or ""
    if uri.lower().startswith("tel:"):
        user = uri[4:].split(";", 1)[0]
    return user.split(";", 1)[0]
