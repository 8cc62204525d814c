"""A cascade leg's jitter buffer (sip.calls.LOW_LATENCY_JB): both ends of the leg between two
nodes get the small one, phones keep pjmedia's adaptive one, and a re-INVITE that re-creates
the stream keeps it. Read back from pjmedia's jitter buffer (the gateway's `media.ready` and
`stream.jitter_buffer` log lines), with real nodes, Redis, SIP and RTP; audio measured."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.cluster import cascade
from media.rooms import RoomKey
from sip import calls
from sip import commands as cmd
from tests.cluster import (  # noqa: F401 (cluster: a fixture)
    CLUSTER_SECRET,
    Cluster,
    cluster,
    room_nodes,
    tail_levels,
)
from tests.harness import GatewayProc, Phonebank
from tests.waiting import eventually

HEARD_DB = -25.0
# jbuf's max_prefetch is max(1, capacity * 4/5) in the codec's frames (10 ms for G.711):
# pjmedia's default buffer (500 ms, frames of at most 20 ms) allows at least 20; the
# low-latency one (40 ms, frames of at least 10 ms) at most 3.
ADAPTIVE_MIN_MAX_PREFETCH = 20
LOW_MAX_MAX_PREFETCH = 3


# -- the command field and the settings (no SIP) --------------------------------------------
def test_answer_and_dial_carry_low_latency() -> None:
    assert cmd.Answer("call_1").low_latency is False
    assert cmd.Dial("call_1", "sip:x@127.0.0.1").low_latency is False
    assert cmd.Answer("call_1", low_latency=True).low_latency is True
    dial = cmd.Dial("call_1", "sip:x@127.0.0.1", "mv-a", (("X-A", "1"),), low_latency=True)
    assert dial.low_latency is True and dial.headers == (("X-A", "1"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dial.low_latency = False  # type: ignore[misc]


def test_low_latency_settings_are_ones_pjmedia_takes() -> None:
    s = calls.LOW_LATENCY_JB
    assert s is not None
    assert set(s) <= {"jbInit", "jbMinPre", "jbMaxPre", "jbMax", "jbDiscardAlgo"}
    # stream.c: a value below one frame means "default"; jbMax is the capacity, rounded up
    # to whole frames. For 10-30 ms frames: 2-4 frames, never the 500 ms default.
    for ptime in (10, 20, 30):
        assert ptime <= s["jbMax"] <= 2 * max(ptime, 20)
    assert s["jbInit"] == 0  # no prefetch: after an underrun the next packet plays at once
    info = SimpleNamespace(jbInit=-1, jbMinPre=-1, jbMaxPre=-1, jbMax=-1, codecName="PCMU")
    assert calls.set_jitter_buffer(info, s)
    assert {k: getattr(info, k) for k in s} == s and info.codecName == "PCMU"
    untouched = SimpleNamespace(jbInit=-1, jbMax=-1)
    assert not calls.set_jitter_buffer(untouched, None)
    assert not calls.set_jitter_buffer(untouched, {})
    assert untouched == SimpleNamespace(jbInit=-1, jbMax=-1)


# -- real nodes -----------------------------------------------------------------------------
def log_events(gw: GatewayProc, name: str) -> list[dict[str, str]]:
    """The `name` lines of a gateway's log as key=value dicts (values here have no spaces)."""
    out = []
    for line in gw.log().splitlines():
        parts = line.split(" ")
        if len(parts) > 3 and parts[2] == name:
            out.append(dict(p.split("=", 1) for p in parts[3:] if "=" in p))
    return out


def by_kind(events: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    kinds: dict[str, list[dict[str, str]]] = {}
    for e in events:
        kinds.setdefault(e["jitter_buffer"], []).append(e)
    return kinds


@pytest.mark.sip
async def test_cascade_leg_has_the_low_latency_buffer_phones_the_adaptive(
    cluster: Cluster, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    recs = {cid: tmp_path / f"{cid}.wav" for cid in ("x", "y")}
    phones.call("x", a.uri(), record=str(recs["x"]), tone_hz=440, **{"from": "+15550001"})
    await phones.wait("media", "x")
    phones.call("y", b.uri(), record=str(recs["y"]), tone_hz=700, **{"from": "+15550002"})
    await phones.wait("media", "y")
    await eventually(lambda: _complete(a), timeout=10, message="room not complete on a")
    await asyncio.sleep(3.0)
    for cid in recs:
        phones.hangup(cid)
    for cid in recs:
        await phones.wait("ended", cid)
    heard = {cid: tail_levels(path, 440, 700) for cid, path in recs.items()}
    print("levels heard (dBFS):", heard)
    assert heard["x"][700] > HEARD_DB and heard["y"][440] > HEARD_DB, heard

    # Each node: its phone (adaptive) and its end of the cascade leg (a answered it, b dialed
    # it), as pjmedia built them.
    for gw in (a, b):
        ready = by_kind(log_events(gw, "media.ready"))
        print(gw.http, ready)
        assert len(ready.get("low_latency", [])) == 1, ready
        assert len(ready.get("adaptive", [])) == 1, ready
        assert int(ready["low_latency"][0]["jb_max_prefetch"]) <= LOW_MAX_MAX_PREFETCH, ready
        assert int(ready["adaptive"][0]["jb_max_prefetch"]) >= ADAPTIVE_MIN_MAX_PREFETCH, ready
        await eventually(lambda gw=gw: _ended_streams(gw, 2), timeout=15,
                         message="streams not ended")
        ended = by_kind(log_events(gw, "stream.jitter_buffer"))
        print(gw.http, ended)
        assert all(int(e["jb_max_prefetch"]) <= LOW_MAX_MAX_PREFETCH
                   for e in ended["low_latency"]), ended
        assert all(int(e["jb_max_prefetch"]) >= ADAPTIVE_MIN_MAX_PREFETCH
                   for e in ended["adaptive"]), ended


@pytest.mark.sip
async def test_reinvite_keeps_the_low_latency_buffer(
    cluster: Cluster, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    """A cascade leg re-INVITEd (hold, then unhold) re-creates its stream on the owner: the
    new stream has the low-latency buffer too, and the room hears the leg again."""
    a = await cluster.start_node("a")
    rec = tmp_path / "x.wav"
    phones.call("x", a.uri(), record=str(rec), tone_hz=440, **{"from": "+15550001"})
    await phones.wait("media", "x")
    await eventually(lambda: room_nodes(a, "r1"), timeout=10)
    # A member node's leg, played by a phone carrying the signed headers (epoch 1: a's claim).
    leg = cascade.headers(CLUSTER_SECRET, RoomKey("cust_test", "r1"), 1, "z")
    phones.call("c", f"sip:cascade@127.0.0.1:{a.sip_port}", tone_hz=700,
                headers=[list(h) for h in leg], **{"from": "mv-z"})
    await phones.wait("media", "c")
    await asyncio.sleep(1.0)
    phones.send(op="hold", id="c")
    await asyncio.sleep(1.5)
    phones.send(op="unhold", id="c")
    await asyncio.sleep(3.0)  # the room hears the leg again: measured at the end of x's file
    phones.hangup("c")
    await phones.wait("ended", "c")
    phones.hangup("x")
    await phones.wait("ended", "x")
    heard = tail_levels(rec, 440, 700, window_s=1.5, tail_s=1.0)
    print("x heard (dBFS):", heard)
    assert heard[700] > HEARD_DB, heard

    ready = by_kind(log_events(a, "media.ready"))
    assert len(ready.get("low_latency", [])) == 1, ready
    leg_id = ready["low_latency"][0]["call_id"]
    await eventually(lambda: _ended_streams(a, 4), timeout=15, message="streams not ended")
    streams = [e for e in log_events(a, "stream.jitter_buffer") if e["call_id"] == leg_id]
    print("cascade leg's streams:", streams)
    # the first stream, the one hold re-created, the one unhold re-created: every one small
    assert len(streams) >= 2, streams
    assert all(e["jitter_buffer"] == "low_latency"
               and int(e["jb_max_prefetch"]) <= LOW_MAX_MAX_PREFETCH for e in streams), streams


async def _complete(gw: GatewayProc) -> dict[str, str] | None:
    seen = await room_nodes(gw, "r1")
    return seen if len(seen) == 2 else None


async def _ended_streams(gw: GatewayProc, n: int) -> Any:
    return len(log_events(gw, "stream.jitter_buffer")) >= n or None
