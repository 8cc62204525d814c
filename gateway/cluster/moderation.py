"""`start_on_enter` and `end_on_exit` across nodes: the rules, as pure functions.

A room whose callers are on several nodes is several room parts joined by cascade legs
(gateway.cluster.node). On one node a room's conversation runs while a `start_on_enter`
participant is in it; cluster-wide it must run while one is in *any* part. Each node
publishes, per room, whether its part has a local (non-cascade) `start_on_enter`
participant (gateway.cluster.moderation_store), and a cascade leg counts as a
`start_on_enter` member of a part only while the far side of it has one:

- on the owner, the leg from node N counts while N has one;
- on node N, its leg to the owner counts while any node other than N has one (the owner, or
  a third node whose callers reach N through the owner's mix).

So every part runs exactly while some node has a local `start_on_enter` participant, and
waits (its callers hear their wait music, and nobody) otherwise.

`end_on_exit`: the node where such a participant left (ending its part) marks the room
ended in Redis with Redis's own clock; every other node ends its part if the part was
created before that mark (a part created after it is a new room of the same name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.cluster.config import NODE_ID
from media.rooms import Member

# Nodes of one room taken from Redis at most: one entry per node is all a cluster writes;
# anything past this is not ours and is cut.
MAX_STARTERS = 256


@dataclass(frozen=True)
class View:
    """What Redis said about a room at one read: its clock (ms), the nodes whose part has a
    local `start_on_enter` participant (entries not expired), and when the room was last
    ended by an `end_on_exit` participant (ms on the same clock; None: not recently)."""

    now_ms: int
    starters: frozenset[str]
    ended_at_ms: int | None = None


class BadView(ValueError):
    pass


def _int(v: Any) -> int:
    s = v.decode() if isinstance(v, bytes) else str(v)
    if not s.isdigit() or len(s) > 18:
        raise BadView(f"not a time: {s[:40]!r}")
    return int(s)


def parse_view(raw: Any) -> View:
    """The publish script's reply `[now_ms, ended_ms or false, node, node, ...]`, checked:
    BadView unless the times are integers; node ids that are not valid ids are dropped,
    and at most MAX_STARTERS are taken."""
    if not isinstance(raw, list | tuple) or len(raw) < 2:
        raise BadView("short reply")
    now = _int(raw[0])
    ended = None if raw[1] in (None, False, 0, b"", "") else _int(raw[1])
    nodes: set[str] = set()
    for v in raw[2:]:
        if len(nodes) >= MAX_STARTERS:
            break
        s = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        if NODE_ID(s) is None:
            nodes.add(s)
    return View(now, frozenset(nodes), ended)


def after_read(before: View | None, got: View, hold_off: bool) -> View:
    """The view to act on after a read. Just after Redis came back from a restart (its
    data lost) the other nodes may not have re-published yet (each does within a tick):
    during `hold_off` a node that was a starter stays one, so no part stops for a moment."""
    if not hold_off or before is None:
        return got
    return View(got.now_ms, got.starters | before.starters, got.ended_at_ms)


def part_shared(owned_here: bool, cascade_legs: int) -> bool:
    """Whether a room part's `start_on_enter` state is any other node's business, so that
    it is published and the others' read (every tick): while it has cascade legs (inbound
    ones on the owner, its own to the owner elsewhere), or does not own the room (it is
    bridging, or failing to). A room whose callers are all on its owner (most rooms: the
    edge hashes a room's number to one node) shares nothing: its part starts on its own
    members as on one node, and a leg that joins later makes it shared at once (both ends
    read and publish when their leg arrives or joins, before the leg can carry a sound)."""
    return cascade_legs > 0 or not owned_here


def has_local_starter(members: Iterable[Member]) -> bool:
    """Whether a room part has a `start_on_enter` participant of its own (held or not, as
    on one node); cascade legs are not participants."""
    return any(m.start_on_enter and not m.always_source for m in members)


def leg_starts(me: str, far: str | None, starters: Iterable[str]) -> bool:
    """Whether a cascade leg counts as a `start_on_enter` member of our part. `far`: the
    node an inbound leg comes from (we own the room); None: our own leg to the owner."""
    nodes = set(starters)
    if far is not None:
        return far in nodes
    return bool(nodes - {me})


def leg_changes(me: str, legs: Mapping[str, str | None], current: Mapping[str, bool],
                starters: Iterable[str]) -> dict[str, bool]:
    """The legs whose `start_on_enter` must change: call ID -> its new value. `legs`: each
    cascade leg in our part -> its far node (None: ours to the owner); `current`: their
    value now (a leg not in it is not in the part yet and is left alone)."""
    nodes = frozenset(starters)
    out: dict[str, bool] = {}
    for cid, far in legs.items():
        if cid not in current:
            continue
        want = leg_starts(me, far, nodes)
        if current[cid] != want:
            out[cid] = want
    return out


def part_created_ms(created_at_s: float, local_now_s: float, view: View) -> int:
    """When a part (created at `created_at_s` by our clock) was created by Redis's clock,
    with the offset between the two clocks as measured at the read of `view` (so nothing
    depends on the nodes' clocks agreeing)."""
    return view.now_ms - round((local_now_s - created_at_s) * 1000)


def part_ends(view: View, created_ms: int) -> bool:
    """Whether a part created at `created_ms` (Redis's clock) was ended by an
    `end_on_exit` participant leaving on another node."""
    return view.ended_at_ms is not None and view.ended_at_ms >= created_ms
