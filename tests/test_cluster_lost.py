"""A dead node's calls without a SIP stack: the record each node publishes (and garbage read
back in its place), the decisions of gateway.cluster.lost, and the take / mark scripts of
the Redis adapter against a real redis-server (exactly one sender per call, however many
race)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest

from gateway import recovery
from gateway.call.session import CallSession
from gateway.call.table import CallTable
from gateway.cluster import lost
from gateway.cluster.reconcile import LostCalls
from gateway.cluster.redis_store import ClusterStore
from gateway.config import Application
from gateway.store import Store
from gateway.timestamps import parse_iso
from tests.fakes import Fakes, incoming
from tests.redisproc import RedisProc

NOW = parse_iso("2026-11-24T10:05:00Z")
VIEW: dict[str, Any] = {  # a call's public record (JSON), as CallRecord.view gives it
    "id": "call_x", "customer_id": "cust_1", "application_id": "app1",
    "status": "in-progress", "direction": "inbound", "from": "+15550001",
    "to": "1001", "created_at": "2026-11-24T10:00:00Z",
    "answered_at": "2026-11-24T10:00:02Z", "room": "r1", "codec": "PCMU",
    "timeline": [{"at": "2026-11-24T10:00:00Z", "event": "call.initiated"}] * 50,
    "quality": {"rx": {"loss": 0}}}


def good(call_id: str = "call_x", **changes: object) -> bytes:
    return lost.encode(call_id, "app1", {**VIEW, "id": call_id, **changes}, NOW).encode()


# -- the record ------------------------------------------------------------------------------
def test_record_round_trip_keeps_what_call_completed_needs() -> None:
    raw = good()
    assert len(raw) < 400  # the timeline, quality and codec stay at home
    entry = lost.decode("call_x", raw, NOW)
    assert entry.app_id == "app1"
    for k in ("id", "customer_id", "application_id", "status", "direction", "from", "to",
              "created_at", "answered_at", "room"):
        assert entry.record[k] == VIEW[k], k


def test_long_text_is_cut_when_written() -> None:
    raw = good(**{"from": "x" * 5000, "to": "y" * 5000, "room": "z" * 5000})
    assert len(raw) <= lost.MAX_RECORD_BYTES
    rec = lost.decode("call_x", raw, NOW).record
    assert len(rec["from"]) == lost.MAX_TEXT and len(rec["room"]) == lost.MAX_TEXT


def test_a_call_id_we_would_not_read_back_is_not_published() -> None:
    with pytest.raises(lost.BadRecord):
        lost.encode("call x\n", "app1", VIEW, NOW)


def _doc(**rec_changes: object) -> bytes:
    doc = json.loads(good())
    doc["rec"].update(rec_changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("call_id", "raw", "why"), [
    ("call_x", b"\xff\xfe garbage", "not JSON"),
    ("call_x", b"[1, 2]", "not a version 1 record"),
    ("call_x", b'{"v": 2, "app": "a", "rec": {}}', "not a version 1 record"),
    ("call_x", b"x" * (lost.MAX_RECORD_BYTES + 1), "bytes"),
    ("call_x", b'{"v": 1, "app": 7, "rec": {}}', "no app"),
    ("call_y", good(), "differs"),
    ("bad id!", good(), "bad call id"),
    ("x" * 200, good(), "bad call id"),
    ("call_x", _doc(direction="sideways"), "direction"),
    ("call_x", _doc(customer_id=""), "customer_id"),
    ("call_x", _doc(application_id="a" * 500), "application_id"),
    ("call_x", _doc(**{"from": "f" * (lost.MAX_TEXT + 1)}), "from"),
    ("call_x", _doc(to=None), "to"),
    ("call_x", _doc(room=["r"]), "room"),
    ("call_x", _doc(status={"a": 1}), "status"),
    ("call_x", _doc(created_at="yesterday"), "created_at"),
    ("call_x", _doc(created_at="2001-01-01T00:00:00Z"), "created_at"),  # far too old
    ("call_x", _doc(created_at="2099-01-01T00:00:00Z"), "created_at"),  # the future
    ("call_x", _doc(answered_at="2026-11-24T09:00:00Z"), "answered_at"),  # before created
    ("call_x", _doc(answered_at=12), "answered_at"),
    ("call_x", _doc(timeline=["x"] * 10), "unknown fields"),
    ("call_x", 12, "not a string"),
])
def test_garbage_records_are_refused(call_id: str, raw: object, why: str) -> None:
    with pytest.raises(lost.BadRecord, match=why):
        lost.decode(call_id, raw, NOW)


def test_settle_sends_the_good_and_drops_the_garbage() -> None:
    pairs = [(b"call_a", good("call_a")), (b"call_b", b"{nope"), (b"\xff" * 300, good()),
             (b"call_c", good("call_c", answered_at=None, status="ringing"))]
    taken = lost.settle(pairs, b"%.3f" % (NOW - 3), NOW)
    assert [c.call_id for c in taken.send] == ["call_a", "call_c"]
    assert next(d[0] for d in taken.dropped) == "call_b"
    assert len(taken.dropped) == 2 and len(taken.dropped[1][0]) <= lost.MAX_ID
    assert all(c.seen_at == NOW - 3 for c in taken.send)
    # the same end as a restarted node's, with the cause gateway_lost
    record, payload = recovery.lost_call(taken.send[0], NOW, recovery.LOST)
    assert payload["event"] == "call.completed"
    assert payload["call"]["id"] == "call_a" and payload["call"]["from"] == VIEW["from"]
    assert payload["data"]["hangup_cause"] == "gateway_lost"
    assert payload["data"]["error"]["code"] == "gateway_lost"
    assert payload["data"]["duration_s"] == NOW - 3 - parse_iso(VIEW["answered_at"])
    assert record["status"] == "failed" and record["hangup_cause"] == "gateway_lost"
    _, unanswered = recovery.lost_call(taken.send[1], NOW, recovery.LOST)
    assert unanswered["data"]["duration_s"] == 0


@pytest.mark.parametrize("seen", [None, b"", b"nan", b"inf", b"-5", b"1e300", b"abc",
                                  str(NOW + 999).encode(), object()])
def test_a_senseless_seen_time_is_now(seen: object) -> None:
    assert lost.seen_time(seen, NOW) == NOW


# -- the decisions ---------------------------------------------------------------------------
def test_due_is_the_dead_nodes_with_records_but_never_us() -> None:
    assert lost.due("a", ["a", "b", "c", "d"], {"a": False, "b": True, "c": False}) == ["c", "d"]
    assert lost.due("a", [], {}) == []
    assert lost.due("a", ["a"], {"a": False}) == []  # our own: taken once, at start
    junk = ["x" * 65, "a b", "", "\u00e9", "n:1"]
    assert lost.due("a", [*junk, "ok"], {}) == ["ok"]  # not node ids: not ours to take
    many = [f"n{i:03}" for i in range(100)]
    assert lost.due("a", many, {}) == many[:lost.MAX_DEAD]


async def test_a_huge_hash_costs_one_batch(store: ClusterStore) -> None:
    await store.redis.hset("mv:calls:b", mapping={f"j{i}": "x" for i in range(20000)})
    await store.redis.hset("mv:calls:b", mapping={"y" * 300: good().decode()})
    await store.redis.sadd("mv:callnodes", "b")
    got = await store.take_calls("a", "b", 50)
    assert got.state == "ok" and len(got.pairs) <= 50 and got.remaining == 20001 - 50
    assert lost.settle(got.pairs, got.seen, NOW).send == []  # all garbage: dropped


def test_at_start_ends_only_what_nobody_else_did() -> None:
    plan = lost.at_start(["c1", "c2", "c3"], {"c1": "me", "c2": "other", "c3": None}, "me")
    assert plan.recover == {"c1", "c3"}  # c3: Redis did not say; twice beats never
    assert plan.elsewhere == {"c2": "other"}
    assert lost.at_start(["c1"], {}, "me").recover == {"c1"}


# -- the scripts, against a real redis-server -----------------------------------------------
async def _publish(store: ClusterStore, node: str, n: int) -> set[str]:
    ids = {f"call_{node}_{i}" for i in range(n)}
    await store.publish_calls(node, {c: good(c).decode() for c in ids}, [], NOW)
    return ids


async def test_publish_then_end_leaves_only_the_live_ones(store: ClusterStore) -> None:
    ids = await _publish(store, "b", 5)
    gone = sorted(ids)[:2]
    await store.publish_calls("b", {}, gone, NOW)
    # redis-py types a reply `bytes | str` for any client; this one (no decode_responses)
    # gives bytes
    keys = cast(list[bytes], await store.redis.hkeys("mv:calls:b"))
    assert {k.decode() for k in keys} == ids - set(gone)
    assert await store.call_nodes() == {"b": False}
    await store.publish_calls("b", {}, [], NOW, replace=True)  # a clean exit, no calls
    assert await store.redis.hlen("mv:calls:b") == 0


async def test_a_live_node_is_not_taken(store: ClusterStore) -> None:
    await _publish(store, "b", 3)
    await store.heartbeat("b", 10, "sip", "http", 0, 0.0)
    got = await store.take_calls("a", "b", 100)
    assert got.state == "alive" and not got.pairs
    assert await store.redis.hlen("mv:calls:b") == 3


async def test_racing_survivors_send_each_call_once(store: ClusterStore,
                                                    redis_server: RedisProc) -> None:
    ids = await _publish(store, "b", 250)
    others = [ClusterStore(redis_server.url) for _ in range(4)]
    got: dict[str, list[str]] = {f"n{i}": [] for i in range(5)}

    async def survivor(name: str, s: ClusterStore) -> None:
        for _ in range(10):
            take = await s.take_calls(name, "b", 30)
            got[name] += [k.decode() for k, _ in take.pairs]
            await asyncio.sleep(0)

    try:
        await asyncio.gather(*(survivor(f"n{i}", s)
                               for i, s in enumerate([store, *others])))
    finally:
        for s in others:
            await s.close()
    sent = [c for calls in got.values() for c in calls]
    assert sorted(sent) == sorted(ids)  # every call, each once
    assert sum(1 for calls in got.values() if calls) == 1, "one survivor took the node"
    assert await store.call_nodes() == {}  # the node is forgotten once emptied
    assert not await store.redis.exists("mv:reconciler:b")


async def test_restarted_node_and_survivor_never_both_send(store: ClusterStore) -> None:
    ids = sorted(await _publish(store, "b", 10))
    first = await store.take_calls("a", "b", 4)  # a survivor took some before b came back
    taken = {k.decode() for k, _ in first.pairs}
    assert len(taken) == 4 and first.remaining == 6
    marks = await store.mark_done("b", ids)  # b restarts with all 10 live in its SQLite
    plan = lost.at_start(ids, marks, "b")
    assert set(plan.elsewhere) == taken and plan.recover == set(ids) - taken
    # b's own take at start: its records are all marked, none is sent twice
    own = await store.take_calls("b", "b", 100, own=True)
    assert own.state == "ok" and not own.pairs and own.remaining == 0
    # and no survivor gets any of them later
    assert not (await store.take_calls("c", "b", 100)).pairs
    # b's second restart (its SQLite rows are gone by then) changes nothing
    assert await store.mark_done("b", ids[:1]) == {ids[0]: "a" if ids[0] in taken else "b"}


async def test_a_survivor_that_died_midway_is_replaced(store: ClusterStore) -> None:
    await _publish(store, "b", 10)
    await store.take_calls("a", "b", 3)
    assert (await store.take_calls("c", "b", 3)).state == "busy"
    await store.redis.pexpire("mv:reconciler:b", 1)  # a's lock lapses (a died)
    await asyncio.sleep(0.05)
    rest = await store.take_calls("c", "b", 100)
    assert rest.state == "ok" and len(rest.pairs) == 7 and rest.remaining == 0


# -- publishing: the call table's watch and the writer (fakes; no Redis) --------------------
class _Watch:
    def __init__(self, fail: bool = False) -> None:
        self.seen: list[tuple[str, str]] = []
        self.fail = fail

    def live(self, session: CallSession) -> None:
        self.seen.append(("live", session.call_id))
        if self.fail:
            raise RuntimeError("boom")

    def gone(self, session: CallSession) -> None:
        self.seen.append(("gone", session.call_id))
        if self.fail:
            raise RuntimeError("boom")


@pytest.mark.parametrize("fail", [False, True])
def test_the_call_table_tells_its_watch_and_a_failing_one_stops_nothing(
        tmp_path: Path, fail: bool) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        table = CallTable(store)
        table.watch = watch = _Watch(fail)
        fakes = Fakes()
        session = fakes.session()
        table.admit(session)
        table.remember(session)
        table.finish(session, 200, "", False, "normal")
        assert watch.seen == [("live", "call_1"), ("live", "call_1"), ("gone", "call_1")]
        assert store.call_get("call_1") is not None  # the call ended as ever
        assert fakes.outbox.names("call_1")[-1] == "call.completed"
    finally:
        store.close()


class _Store:
    def __init__(self) -> None:
        self.fail = True
        self.writes: list[tuple[dict[str, str], list[str], bool]] = []

    async def publish_calls(self, node: str, put: dict[str, str], gone: list[str],
                            now: float, *, replace: bool = False) -> None:
        if self.fail:
            raise ConnectionError("redis down")
        self.writes.append((put, gone, replace))


async def test_a_failed_write_is_made_good_by_rewriting_everything() -> None:
    fakes = Fakes()
    live, ended, leg = (fakes.session(incoming(c)) for c in ("call_1", "call_2", "call_3"))
    leg.app = Application(id="app_cluster", customer_id="c", answer_url="http://x/",
                          secret="s")
    store = _Store()
    calls = LostCalls("a", cast(Any, store), 1.0, "app_cluster")
    calls.calls = cast(Any, [live, ended, leg])
    calls.resync = False
    for s in (live, ended, leg):
        calls.live(s)  # memory only: never raises, never waits
    assert set(calls.pending) == {"call_1", "call_2"}  # cascade legs are not published
    with pytest.raises(ConnectionError):
        await calls.flush()
    assert calls.resync and not calls.pending
    ended.rec.ended_at = NOW
    calls.gone(ended)
    store.fail = False
    await calls.flush()  # everything live now, replacing what Redis had
    put, gone, replace = store.writes[-1]
    assert replace and set(put) == {"call_1"} and gone == [] and not calls.resync
    calls.gone(live)
    await calls.flush()
    assert store.writes[-1] == ({}, ["call_1"], False)


def test_a_call_completed_elsewhere_sends_none_from_here() -> None:
    fakes = Fakes()
    session = fakes.session()
    session.completed_elsewhere = "a"
    fakes.calls.finish(session, 503, "", True, "gateway_lost")
    assert "call.completed" not in fakes.outbox.names("call_1")
    assert session.rec.timeline[-1]["event"] == "call.completed_elsewhere"
    assert session.rec.timeline[-1]["node"] == "a"
