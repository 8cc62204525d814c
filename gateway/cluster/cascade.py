"""The headers of a cascade leg (one SIP leg per room and node, from a node with callers to
the room's owner), built and checked. Pure.

    X-MiniVoice-Room:    <customer, percent-encoded>/<room>
    X-Room-Epoch:        <the epoch of the owner's claim the caller saw>
    X-MiniVoice-Node:    <the calling node's id>
    X-MiniVoice-Cluster: <hex HMAC-SHA256 of the three values above, keyed by cluster.secret>

The HMAC is what makes the owner take the leg from cluster nodes only: without the secret
nobody can name a room and an epoch. (It does not stop a replay of a captured INVITE at the
same epoch; cluster traffic belongs on a private network: docs/cluster.md.)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from gateway.cluster.config import NODE_ID
from media.rooms import RoomKey

ROOM = "X-MiniVoice-Room"
EPOCH = "X-Room-Epoch"
NODE = "X-MiniVoice-Node"
MAC = "X-MiniVoice-Cluster"
NAMES = (ROOM, EPOCH, NODE, MAC)

_ROOM_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_EPOCH = re.compile(r"[1-9][0-9]{0,17}")
_MAC = re.compile(r"[0-9a-f]{64}")
MAX_CUSTOMER = 64


@dataclass(frozen=True)
class Offer:
    """A checked cascade leg: which room, at which epoch, from which node."""

    key: RoomKey
    epoch: int
    node: str


class BadCascade(ValueError):
    pass


def encode_room(key: RoomKey) -> str:
    return quote(key.customer_id, safe="") + "/" + key.name


def _mac(secret: str, room: str, epoch: str, node: str) -> str:
    msg = f"{room}\n{epoch}\n{node}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def headers(secret: str, key: RoomKey, epoch: int, node: str) -> tuple[tuple[str, str], ...]:
    room = encode_room(key)
    return ((ROOM, room), (EPOCH, str(epoch)), (NODE, node),
            (MAC, _mac(secret, room, str(epoch), node)))


def is_cascade(received: tuple[tuple[str, str], ...]) -> bool:
    """Whether an INVITE claims to be a cascade leg (it is checked by `parse`)."""
    return any(name.lower() == MAC.lower() for name, _ in received)


def parse(secret: str, received: tuple[tuple[str, str], ...]) -> Offer:
    """The offer in an INVITE's headers; BadCascade (with why) unless every header is there
    once, well formed, and the MAC is right."""
    found: dict[str, str] = {}
    for name, value in received:
        canon = next((n for n in NAMES if n.lower() == name.lower()), None)
        if canon is None:
            continue
        if canon in found:
            raise BadCascade(f"{canon} twice")
        found[canon] = value.strip()
    missing = [n for n in NAMES if n not in found]
    if missing:
        raise BadCascade("missing " + ", ".join(missing))
    room, epoch, node, mac = (found[n] for n in NAMES)
    if not _MAC.fullmatch(mac) or not hmac.compare_digest(
            mac, _mac(secret, room, epoch, node)):
        raise BadCascade("bad MAC")
    if not _EPOCH.fullmatch(epoch):
        raise BadCascade("bad epoch")
    if NODE_ID(node) is not None:
        raise BadCascade("bad node id")
    customer_q, sep, name = room.partition("/")
    customer = unquote(customer_q)
    if not sep or not _ROOM_NAME.fullmatch(name) or not 1 <= len(customer) <= MAX_CUSTOMER:
        raise BadCascade("bad room")
    return Offer(RoomKey(customer, name), int(epoch), node)
