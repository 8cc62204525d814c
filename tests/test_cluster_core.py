"""The cluster's pure parts: room ownership decisions, epoch fencing, cascade headers,
the cluster config. No I/O."""

from __future__ import annotations

import pytest

from gateway.cluster import cascade
from gateway.cluster.ownership import (
    Adopt,
    Bridge,
    Claim,
    Forget,
    Local,
    Release,
    Renew,
    StepDown,
    TryClaim,
    Unbridge,
    admit_leg,
    plan,
)
from gateway.config import ConfigError, from_dict
from media.rooms import RoomKey

A = Claim("a", 3, "127.0.0.1:5070")
B = Claim("b", 4, "127.0.0.1:5080")


def test_first_caller_claims_above_every_epoch_seen() -> None:
    assert plan("a", Local(callers=1, max_epoch_seen=7), None) == (TryClaim(7),)


def test_owner_renews_its_own_claim() -> None:
    assert plan("a", Local(callers=1, owned_epoch=3), A) == (Renew(3),)


def test_owner_whose_record_vanished_puts_it_back() -> None:
    # Redis restarted: the owner keeps its epoch (no needless re-bridging elsewhere).
    assert plan("a", Local(callers=1, owned_epoch=3), None) == (Renew(3),)


def test_claim_won_is_adopted_and_the_old_bridge_dropped() -> None:
    got = plan("a", Local(callers=2, bridge=B), Claim("a", 5, "x:1"))
    assert got == (Adopt(Claim("a", 5, "x:1")), Unbridge())


def test_non_owner_bridges_to_the_owner_once() -> None:
    assert plan("b", Local(callers=1), A) == (Bridge(A),)
    assert plan("b", Local(callers=1, bridge=A), A) == ()


def test_new_owner_means_a_new_bridge() -> None:
    newer = Claim("c", 4, "127.0.0.1:5090")
    assert plan("b", Local(callers=1, bridge=A), newer) == (Unbridge(), Bridge(newer))


def test_stale_owner_steps_down_and_bridges_to_the_new_one() -> None:
    # We owned it at epoch 3; someone claimed epoch 4 while we were cut off.
    assert plan("a", Local(callers=1, inbound_legs=2, owned_epoch=3), B) == (
        StepDown(3), Bridge(B))


def test_stale_owner_without_callers_only_steps_down() -> None:
    assert plan("a", Local(callers=0, inbound_legs=1, owned_epoch=3), B) == (StepDown(3),)


def test_last_local_caller_gone() -> None:
    assert plan("a", Local(callers=0, owned_epoch=3), A) == (Release(3), Forget())
    assert plan("b", Local(callers=0, bridge=A), A) == (Unbridge(), Forget())
    assert plan("b", Local(callers=0), None) == (Forget(),)


def test_owner_keeps_the_room_for_remote_callers_only() -> None:
    assert plan("a", Local(callers=0, inbound_legs=1, owned_epoch=3), A) == (Renew(3),)


def test_older_record_of_ours_is_overwritten_by_renewal() -> None:
    assert plan("a", Local(callers=1, owned_epoch=5), Claim("a", 3, "x:1")) == (Renew(5),)


def test_owner_accepts_legs_at_its_epoch_only() -> None:
    assert admit_leg(3, 3) is None
    assert admit_leg(None, 3) == "not_owner"
    assert admit_leg(3, 2) == "stale_epoch"
    assert admit_leg(3, 4) == "newer_epoch"  # we are the stale owner


# -- cascade headers ----------------------------------------------------------------------
SECRET = "cluster-secret-0123456789"


def test_cascade_headers_round_trip_with_a_hostile_customer_id() -> None:
    key = RoomKey("cust:1/x%2F\n", "room-1")
    hdrs = cascade.headers(SECRET, key, 9, "node-b")
    assert all("\n" not in v and "\r" not in v for _, v in hdrs)
    offer = cascade.parse(SECRET, hdrs)
    assert offer == cascade.Offer(key, 9, "node-b")
    # header names are case-insensitive in SIP
    assert cascade.parse(SECRET, tuple((n.lower(), v) for n, v in hdrs)) == offer


def _replace(hdrs: tuple[tuple[str, str], ...], name: str, value: str
             ) -> tuple[tuple[str, str], ...]:
    return tuple((n, value if n == name else v) for n, v in hdrs)


@pytest.mark.parametrize("mutate, why", [
    (lambda h: h[:-1], "missing"),
    (lambda h: (*h, h[0]), "twice"),
    (lambda h: _replace(h, cascade.EPOCH, "10"), "bad MAC"),  # epoch changed: MAC fails
    (lambda h: _replace(h, cascade.MAC, "0" * 64), "bad MAC"),
    (lambda h: _replace(h, cascade.MAC, "x" * 5000), "bad MAC"),
    (lambda h: _replace(h, cascade.ROOM, "cust/other"), "bad MAC"),
])
def test_cascade_headers_refused(mutate, why) -> None:  # type: ignore[no-untyped-def]
    hdrs = cascade.headers(SECRET, RoomKey("c", "r"), 9, "node-b")
    with pytest.raises(cascade.BadCascade, match=why):
        cascade.parse(SECRET, mutate(hdrs))


def test_cascade_with_another_secret_is_refused() -> None:
    hdrs = cascade.headers("another-secret-0123456789", RoomKey("c", "r"), 1, "b")
    with pytest.raises(cascade.BadCascade, match="bad MAC"):
        cascade.parse(SECRET, hdrs)


@pytest.mark.parametrize("room, epoch, node, why", [
    ("c/" + "r" * 129, "1", "b", "bad room"),
    ("c/r r", "1", "b", "bad room"),
    ("noslash", "1", "b", "bad room"),
    ("/r", "1", "b", "bad room"),
    ("c/r", "0", "b", "bad epoch"),
    ("c/r", "-1", "b", "bad epoch"),
    ("c/r", "9" * 40, "b", "bad epoch"),
    ("c/r", "1", "b:c", "bad node"),
])
def test_well_signed_but_malformed_values_are_refused(room, epoch, node, why) -> None:  # type: ignore[no-untyped-def]
    # A MAC made with the right secret still does not let a malformed value through.
    mac = cascade._mac(SECRET, room, epoch, node)
    hdrs = ((cascade.ROOM, room), (cascade.EPOCH, epoch), (cascade.NODE, node),
            (cascade.MAC, mac))
    with pytest.raises(cascade.BadCascade, match=why):
        cascade.parse(SECRET, hdrs)


def test_is_cascade() -> None:
    assert cascade.is_cascade((("x-minivoice-cluster", "1"),))
    assert not cascade.is_cascade((("X-Other", "1"),))


# -- config -------------------------------------------------------------------------------
APP = {"id": "a", "customer_id": "c", "answer_url": "http://x/a", "secret": "12345678"}


def test_cluster_config_needs_a_secret_with_a_node_id() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.secret"):
        from_dict({"applications": [APP], "cluster": {"node_id": "n1"}})
    with pytest.raises(ConfigError, match=r"cluster\.node_id"):
        from_dict({"applications": [APP], "cluster": {"node_id": "bad id",
                                                      "secret": "s" * 16}})
    cfg = from_dict({"applications": [APP], "cluster": {"node_id": "n1", "secret": "s" * 16}})
    assert cfg.cluster.enabled and cfg.cluster.lease_s == 4.0
    assert not from_dict({"applications": [APP]}).cluster.enabled


def _cluster(**timing: float) -> dict[str, object]:
    return {"applications": [APP], "cluster": {"node_id": "n1", "secret": "s" * 16, **timing}}


def test_cluster_node_ttl_must_outlast_3_ticks() -> None:
    """A liveness record refreshed every tick that could expire between two refreshes
    would have the others take a live node for dead (its calls reported lost)."""
    with pytest.raises(ConfigError) as err:
        from_dict(_cluster(node_ttl_s=2, tick_s=1))
    assert str(err.value).splitlines()[1:] == [
        "  cluster.node_ttl_s: must be at least 3 x cluster.tick_s (1; it is 2): a node "
        "refreshes its liveness record every tick, and is declared dead (its calls reported "
        "lost, its cascade legs ended) when the record expires between refreshes"]
    # at or below one tick (the shape that broke liveness), a fraction, the largest tick
    for bad in ({"node_ttl_s": 2, "tick_s": 2, "lease_s": 4},
                {"node_ttl_s": 2, "tick_s": 0.7, "lease_s": 4},
                {"node_ttl_s": 29.99, "tick_s": 10, "lease_s": 60}):
        with pytest.raises(ConfigError, match=r"cluster\.node_ttl_s: must be at least 3 x"):
            from_dict(_cluster(**bad))
    # exactly 3 ticks passes, binary fractions included (3 x 1.1 is 3.3000000000000003)
    for ok in ({"node_ttl_s": 3, "tick_s": 1}, {"node_ttl_s": 3.3, "tick_s": 1.1},
               {"node_ttl_s": 2.1, "tick_s": 0.7}, {"node_ttl_s": 30, "tick_s": 10, "lease_s": 60},
               {"node_ttl_s": 2, "tick_s": 0.1, "lease_s": 1}):
        assert from_dict(_cluster(**ok)).cluster.node_ttl_s == ok["node_ttl_s"]


def test_cluster_lease_must_outlast_2_ticks() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(_cluster(lease_s=1.9, tick_s=1))
    assert str(err.value).splitlines()[1:] == [
        "  cluster.lease_s: must be at least 2 x cluster.tick_s (1; it is 1.9): the owner renews "
        "its rooms' leases every tick, and a room whose lease lapses between renewals is taken "
        "over by another node"]
    assert from_dict(_cluster(lease_s=2.2, tick_s=1.1)).cluster.lease_s == 2.2
    # checked without a node_id too (a config that turns the cluster on later is sound)
    with pytest.raises(ConfigError, match=r"cluster\.lease_s: must be at least 2 x"):
        from_dict({"applications": [APP], "cluster": {"lease_s": 1, "tick_s": 1}})
    # both wrong: both said
    with pytest.raises(ConfigError) as err:
        from_dict(_cluster(lease_s=1, tick_s=1, node_ttl_s=2))
    assert [line.split(":")[0].strip() for line in str(err.value).splitlines()[1:]] == [
        "cluster.lease_s", "cluster.node_ttl_s"]


def test_default_and_test_cluster_timings_pass_the_checks() -> None:
    """(configs/*.yaml set no timing: the defaults; tests/test_compose*.py and
    tests/test_cluster_stack.py load them whole.)"""
    from tests.cluster import TIMING
    cfg = from_dict(_cluster()).cluster
    assert (cfg.lease_s, cfg.tick_s, cfg.node_ttl_s) == (4.0, 1.0, 10.0)
    assert from_dict(_cluster(**TIMING)).cluster.node_ttl_s == TIMING["node_ttl_s"]


# -- X- headers out of an INVITE (sip.sipmsg.x_headers) -----------------------------------
def test_x_headers_are_read_with_limits() -> None:
    from sip.sipmsg import MAX_X_HEADERS, x_headers

    msg = ("INVITE sip:cascade@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nX-Room-Epoch: 3\r\n"
           "x-minivoice-node:  b \r\n X-Folded: no\r\nX-Long: " + "a" * 600 + "\r\n"
           "Subject: X-Not: a header\r\n\r\nX-In-Body: 1\r\n")
    assert x_headers(msg) == (("X-Room-Epoch", "3"), ("x-minivoice-node", "b"))
    flood = "INVITE sip:x@h SIP/2.0\r\n" + "".join(f"X-H{i}: {i}\r\n" for i in range(500))
    assert len(x_headers(flood + "\r\n")) == MAX_X_HEADERS
    assert x_headers("") == ()
    assert x_headers("garbage\n\nX-A: 1") == ()


# -- rooms: a cascade leg is always mixed (media.rooms) ------------------------------------
def test_large_room_always_mixes_the_cascade_leg() -> None:
    from media.rooms import Link, RoomBook

    book = RoomBook(full_mesh_max=2)
    key = RoomKey("c", "r")
    for cid in ("a", "b", "c"):
        book.join(key, cid, muted=False, end_on_exit=False, now=0)
    book.join(key, "leg", muted=False, end_on_exit=False, now=0, always_source=True)
    links = book.rooms[key].links()
    # no speakers chosen: only the leg is heard, by everyone else
    assert {lk for lk in links if lk.dst != "@monitor"} == {
        Link("leg", "a"), Link("leg", "b"), Link("leg", "c")}


def test_after_a_redis_restart_a_bridged_node_lets_the_owner_reclaim_first() -> None:
    assert plan("b", Local(callers=1, bridge=A, max_epoch_seen=3, hold_off=True), None) == ()
    # not bridged (nobody to wait for), or the hold-off is over: claim
    assert plan("b", Local(callers=1, max_epoch_seen=3, hold_off=True), None) == (TryClaim(3),)
    assert plan("b", Local(callers=1, bridge=A, max_epoch_seen=3), None) == (TryClaim(3),)
