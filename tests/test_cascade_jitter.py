"""A cascade leg's jitter buffer (cluster.cascade_jitter_ms, sip.calls): both ends of the leg
between two nodes get the small one, phones keep pjmedia's adaptive one, and a re-INVITE that
re-creates the stream keeps it. Read back from pjmedia's jitter buffer (the gateway's
`media.ready` and `stream.jitter_buffer` log lines), with real nodes, Redis, SIP and RTP; audio
measured."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from pathlib import Path
from types import SimpleNamespace
from typing import TypedDict

import pytest

from gateway.cluster import cascade
from gateway.config import ConfigError, from_dict
from media.rooms import RoomKey
from sip import calls
from sip import commands as cmd
from tests.checks import TWO_TONES, callers_on_two_nodes, hang_up_and_hear_each_other
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
APP = {"id": "a", "customer_id": "c", "answer_url": "http://x/a", "secret": "12345678"}
# jbuf's max_prefetch is max(1, capacity * 4/5) in the codec's frames (10 ms for G.711):
# pjmedia's default buffer (500 ms, frames of at most 20 ms) allows at least 20; the
# low-latency one (40 ms, frames of at least 10 ms) at most 3.
ADAPTIVE_MIN_MAX_PREFETCH = 20
LOW_MAX_MAX_PREFETCH = 3
SMALL = "max_40ms"  # the log's name of a 40 ms buffer


# -- the command field, the config and the settings (no SIP) -------------------------------
def test_answer_and_dial_carry_jb_max_ms() -> None:
    assert cmd.Answer("call_1").jb_max_ms == 0
    assert cmd.Dial("call_1", "sip:x@127.0.0.1").jb_max_ms == 0
    assert cmd.Answer("call_1", jb_max_ms=40).jb_max_ms == 40
    dial = cmd.Dial("call_1", "sip:x@127.0.0.1", "mv-a", (("X-A", "1"),), jb_max_ms=500)
    assert dial.jb_max_ms == 500 and dial.headers == (("X-A", "1"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dial.jb_max_ms = 0  # type: ignore[misc]
    # below one packet, above pjmedia's default, negative, huge, not an int: refused
    for bad in (1, 19, 501, -40, 10**12, 40.0, "40", True, None):
        for make in (lambda v: cmd.Answer("call_1", jb_max_ms=v),
                     lambda v: cmd.Dial("call_1", "sip:x@127.0.0.1", jb_max_ms=v)):
            with pytest.raises(ValueError, match="jb_max_ms"):
                make(bad)


def test_cascade_jitter_ms_config() -> None:
    base = {"node_id": "a", "secret": CLUSTER_SECRET}
    assert from_dict({"applications": [APP], "cluster": base}).cluster.cascade_jitter_ms == 40
    for ok in (0, 20, 500):
        cfg = from_dict({"applications": [APP], "cluster": {**base, "cascade_jitter_ms": ok}})
        assert cfg.cluster.cascade_jitter_ms == ok
    for bad in (1, 19, 501, -1, 10**9, "40ms", [40], None, True, 40.5):
        with pytest.raises(ConfigError, match=r"cluster\.cascade_jitter_ms"):
            from_dict({"applications": [APP], "cluster": {**base, "cascade_jitter_ms": bad}})


def test_small_jitter_buffer_settings() -> None:
    s = calls.small_jitter_buffer(40)
    assert s == {"jbInit": 0, "jbMinPre": -1, "jbMaxPre": -1, "jbMax": 40}
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


class _JitterSetting(TypedDict, total=False):
    cascade_jitter_ms: int


@pytest.mark.sip
@pytest.mark.parametrize("setting", [None, 0])
async def test_cascade_leg_has_the_low_latency_buffer_phones_the_adaptive(
    cluster: Cluster, phones: Phonebank, tmp_path: Path, setting: int | None  # noqa: F811
) -> None:
    """By default (None: 40 ms) the cascade leg's two ends have the small buffer; with
    `cascade_jitter_ms: 0` the adaptive one, as phones always."""
    opts: _JitterSetting = {} if setting is None else {"cascade_jitter_ms": setting}
    leg_kind = SMALL if setting is None else "adaptive"
    a = await cluster.start_node("a", **opts)
    b = await cluster.start_node("b", **opts)
    recs = await callers_on_two_nodes(phones, a, b, tmp_path)  # x on a, y on b, in r1
    await asyncio.sleep(3.0)
    await hang_up_and_hear_each_other(phones, recs, TWO_TONES)

    # Each node: its phone (adaptive) and its end of the cascade leg (a answered it, b dialed
    # it), as pjmedia built them.
    for gw in (a, b):
        ready = by_kind(log_events(gw, "media.ready"))
        print(gw.http, ready)
        if leg_kind == SMALL:
            assert len(ready.get(SMALL, [])) == 1, ready
            assert len(ready.get("adaptive", [])) == 1, ready
            assert int(ready[SMALL][0]["jb_max_prefetch"]) <= LOW_MAX_MAX_PREFETCH, ready
        else:
            assert list(ready) == ["adaptive"] and len(ready["adaptive"]) == 2, ready
        assert all(int(e["jb_max_prefetch"]) >= ADAPTIVE_MIN_MAX_PREFETCH
                   for e in ready["adaptive"]), ready
        await eventually(functools.partial(_ended_streams, gw, 2), timeout=15,
                         message="streams not ended")
        ended = by_kind(log_events(gw, "stream.jitter_buffer"))
        print(gw.http, ended)
        assert all(int(e["jb_max_prefetch"]) <= LOW_MAX_MAX_PREFETCH
                   for e in ended.get(SMALL, [])), ended
        assert all(int(e["jb_max_prefetch"]) >= ADAPTIVE_MIN_MAX_PREFETCH
                   for e in ended["adaptive"]), ended


@pytest.mark.sip
async def test_reinvite_keeps_the_low_latency_buffer(
    cluster: Cluster, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    """A cascade leg re-INVITEd (hold, then unhold) re-creates its stream on the owner: the
    new stream has the low-latency buffer too, and the room hears the leg again."""
    a = await cluster.start_node("a", cascade_jitter_ms=40)
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
    assert len(ready.get(SMALL, [])) == 1, ready
    leg_id = ready[SMALL][0]["call_id"]
    await eventually(lambda: _ended_streams(a, 4), timeout=15, message="streams not ended")
    streams = [e for e in log_events(a, "stream.jitter_buffer") if e["call_id"] == leg_id]
    print("cascade leg's streams:", streams)
    # the first stream, the one hold re-created, the one unhold re-created: every one small
    assert len(streams) >= 2, streams
    assert all(e["jitter_buffer"] == SMALL
               and int(e["jb_max_prefetch"]) <= LOW_MAX_MAX_PREFETCH for e in streams), streams


async def _ended_streams(gw: GatewayProc, n: int) -> bool | None:
    return len(log_events(gw, "stream.jitter_buffer")) >= n or None
