"""Where applications may send calls: SIP URIs from transfer and POST /v1/calls are parsed
strictly, their host resolved by the gateway and checked against dialing.allow_private, and
the checked address is what gets dialed. Unit tests with crafted URIs and a fake resolver;
then the real gateway refusing a transfer into a private network and placing one to an
allowed loopback UA."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.dialing import (
    TargetMalformed,
    TargetRefused,
    TargetUnresolvable,
    parse_target,
    pin,
)
from gateway.netguard import AddressPolicy
from tests.harness import AppServer, GatewayProc, Phonebank, app_config

PUBLIC = AddressPolicy.from_config([])
LOOPBACK = AddressPolicy.from_config(["127.0.0.0/8"])


def resolver(*addresses: str, delay: float = 0.0) -> Callable[..., Awaitable[Sequence[Any]]]:
    async def getaddrinfo(host: str, port: int, **kw: Any) -> Sequence[Any]:
        await asyncio.sleep(delay)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM, 17, "",
                 (a, port)) for a in addresses]
    return getaddrinfo


@pytest.mark.parametrize("uri", [
    "sip:a@evil.example@127.0.0.1",      # two '@': parsers disagree on the host
    "sip:x@127.1", "sip:x@2130706433",   # short and integer IPv4 forms getaddrinfo accepts
    "sip:x@0x7f.0.0.1", "sip:x@1.2.3.999",
    "sip:x@host:0", "sip:x@host:65536", "sip:x@host:123456",
    "sip:x@[127.0.0.1]", "sip:x@[::1", "sip:x@exa mple.com", "sip:x@-bad-.example",
    "sip:x@" + "a" * 64 + ".example", "sip:x@" + "a." * 130 + "example",
    "sip:@host", "tel:+15551234", "sip:x@host;" + "p" * 600, "sip:x@host<sip:y@z>",
    "sip:x@host\r\nVia: evil", "",
])
def test_malformed_or_ambiguous_targets_are_refused(uri: str) -> None:
    with pytest.raises(TargetMalformed):
        parse_target(uri)


def test_parse_keeps_params_and_port() -> None:
    t = parse_target("sips:+15551234@trunk.example.com:5061;transport=tls?X-A=1")
    assert (t.scheme, t.user, t.host, t.port, t.rest) == (
        "sips", "+15551234", "trunk.example.com", 5061, ";transport=tls?X-A=1")
    assert t.with_address("203.0.113.7") == "sips:+15551234@203.0.113.7:5061;transport=tls?X-A=1"
    assert parse_target("sip:bob@[2001:db8::1]").with_address("2001:db8::1") == \
        "sip:bob@[2001:db8::1]"


@pytest.mark.parametrize("uri", [
    "sip:x@127.0.0.1", "sip:x@10.0.0.5", "sip:x@169.254.169.254:80", "sip:x@192.168.1.1",
    "sip:x@100.64.0.1", "sip:x@0.0.0.0", "sip:x@224.0.0.1", "sip:x@[::1]",
    "sip:x@[::ffff:127.0.0.1]", "sip:x@[fd00::1]", "sip:x@[fe80::1]",
])
async def test_non_public_literals_are_refused_by_default(uri: str) -> None:
    with pytest.raises(TargetRefused, match=r"dialing\.allow_private"):
        await pin(uri, PUBLIC, 1.0)


async def test_names_are_resolved_once_and_the_checked_address_is_dialed() -> None:
    assert await pin("sip:bob@trunk.example.com;transport=udp", PUBLIC, 1.0,
                     resolver("93.184.216.7", "93.184.216.8")) == \
        "sip:bob@93.184.216.7;transport=udp"
    assert await pin("sip:bob@v6.example.com:5070", PUBLIC, 1.0,
                     resolver("2606:4700::7")) == "sip:bob@[2606:4700::7]:5070"
    assert await pin("sip:x@1.1.1.1", PUBLIC, 1.0) == "sip:x@1.1.1.1"


async def test_a_name_with_any_private_answer_is_refused() -> None:
    # rebinding-style answers: one public address to pass a check, one internal to be dialed
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.9"):
        await pin("sip:bob@mixed.example.com", PUBLIC, 1.0, resolver("93.184.216.7", "10.0.0.9"))
    with pytest.raises(TargetRefused):
        await pin("sip:bob@localhost", PUBLIC, 1.0, resolver("127.0.0.1"))
    with pytest.raises(TargetUnresolvable, match="more than"):
        await pin("sip:bob@many.example.com", PUBLIC, 1.0,
                  resolver(*(f"93.184.216.{i}" for i in range(1, 40))))


async def test_slow_failing_or_empty_resolution_is_refused_in_time() -> None:
    with pytest.raises(TargetUnresolvable, match=r"within 0\.2 s"):
        await pin("sip:bob@slow.example.com", PUBLIC, 0.2, resolver("93.184.216.7", delay=30))

    async def failing(host: str, port: int, **kw: Any) -> Sequence[Any]:
        raise socket.gaierror(-2, "Name or service not known")
    with pytest.raises(TargetUnresolvable, match="does not resolve"):
        await pin("sip:bob@nx.example.com", PUBLIC, 1.0, failing)
    with pytest.raises(TargetUnresolvable, match="no address"):
        await pin("sip:bob@empty.example.com", PUBLIC, 1.0, resolver())


async def test_the_operator_allows_networks_and_names() -> None:
    assert await pin("sip:x@127.0.0.1:5080", LOOPBACK, 1.0) == "sip:x@127.0.0.1:5080"
    pbx = AddressPolicy.from_config(["pbx.internal"])
    assert await pin("sip:100@pbx.internal", pbx, 1.0, resolver("10.1.2.3")) == \
        "sip:100@10.1.2.3"
    with pytest.raises(TargetRefused):
        await pin("sip:100@other.internal", pbx, 1.0, resolver("10.1.2.3"))


# -- the real gateway ----------------------------------------------------------------------
GatewayFactory = Callable[..., Awaitable[GatewayProc]]


@pytest.mark.sip
async def test_transfer_into_a_private_network_is_refused_and_the_next_action_runs(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank, tmp_path: Path
) -> None:
    ready = phones.find("ready", None)
    assert ready is not None
    listener = f"sip:bob@127.0.0.1:{ready['port']}"
    app.answer = lambda p: {"actions": [
        {"transfer": {"to": "sip:bob@10.11.12.13:5060", "timeout": 5}},
        {"transfer": {"to": listener.replace("127.0.0.1", "localhost"), "timeout": 5}},
        {"hangup": {"reason": "done"}}]}
    # loopback is not allowed here: the harness's default dialing.allow_private is replaced
    gw = await gateway_factory([app_config(app)], dialing={"allow_private": ["localhost"]})
    phones.send(op="listen", mode="busy")
    phones.call("a", gw.uri())
    # two calls complete: the caller's, and the outbound leg the busy listener refused
    hooks = await app.completed(count=2, timeout=20)
    [done] = [h for h in hooks if h["call"]["direction"] == "inbound"]
    assert done["data"]["hangup_reason"] == "done"
    _, record = await gw.get(f"/v1/calls/{done['call']['id']}")
    failed = [e for e in record["timeline"] if e["event"] == "transfer.failed"]
    assert len(failed) == 1 and "10.11.12.13" in failed[0]["reason"], record["timeline"]
    assert "dialing.allow_private" in failed[0]["reason"]
    # the allowed name was resolved by the gateway and dialed: the listener said busy
    outcomes = [e["outcome"] for e in record["timeline"] if e["event"] == "transfer.outcome"]
    assert outcomes == ["failed", "busy"], record["timeline"]
    assert phones.find("incoming", None) is not None  # the one INVITE that got through
