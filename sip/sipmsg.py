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


MAX_X_HEADERS = 16
MAX_X_VALUE = 512


def x_headers(message: str) -> tuple[tuple[str, str], ...]:
    """The X- headers of a SIP message's header section, as (name, value) pairs in order:
    at most MAX_X_HEADERS of them; a value longer than MAX_X_VALUE is left out (nothing the
    gateway reads is that long). Folded continuation lines are ignored."""
    head = message.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    found: list[tuple[str, str]] = []
    for line in head.replace("\r\n", "\n").split("\n")[1:]:
        if len(found) >= MAX_X_HEADERS:
            break
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name.lower().startswith("x-") or line[:1] in (" ", "\t"):
            continue
        value = value.strip()
        if len(value) <= MAX_X_VALUE and len(name) <= 64:
            found.append((name, value))
    return tuple(found)
