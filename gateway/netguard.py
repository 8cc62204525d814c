"""Outbound HTTP hygiene for URLs that customers supply (action_url, redirect, play):
where they may connect, how much of a response is read, and what of them is logged.

The address check runs when the connection is made (a resolver that refuses, plus a check of
IP literals, which aiohttp never resolves), so a name that resolved to a public address when
it was validated and to 127.0.0.1 a second later (DNS rebinding) is still refused.
Operator-configured URLs (answer_url, event_url, fallback_url) do not go through this.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AddrInfo = tuple[Any, Any, int, str, tuple[Any, ...]]


class BlockedAddress(OSError):
    """A customer URL that resolves to an address the gateway must not reach."""


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


def parse_allow(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """Split `hooks.allow_private` entries into networks (CIDR or single address) and host
    names. Raises ValueError on an entry that is neither."""
    nets: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if not entry or any(c in entry for c in "/:@ ") or len(entry) > 253:
                raise ValueError(f"{entry!r} is neither a network nor a host name") from None
            hosts.add(entry.lower().rstrip("."))
    return tuple(nets), frozenset(hosts)


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class AddressPolicy:
    """Public unicast addresses are allowed; loopback, private (RFC 1918), link-local (and
    with it cloud metadata, 169.254.169.254), ULA, CGNAT, multicast, unspecified and the
    other special ranges only when the operator lists the network or the host."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, entries: Iterable[str]) -> AddressPolicy:
        nets, hosts = parse_allow(entries)
        return cls(nets, hosts)

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allow_hosts

    def permits(self, address: str) -> bool:
        try:
            ip = _unmapped(ipaddress.ip_address(address.split("%", 1)[0]))
        except ValueError:
            return False
        if any(ip in net for net in self.allow_networks):
            return True
        return ip.is_global and not ip.is_multicast


def literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_url(url: str, policy: AddressPolicy) -> None:
    """Refuse, before connecting, a URL whose host is a forbidden IP literal (aiohttp connects
    to literals without asking the resolver). Names are checked by `GuardedResolver`.
    Parsed with yarl, as aiohttp parses it: two parsers that disagree on the host are a
    classic way around such checks."""
    try:
        host = yarl.URL(url).raw_host or ""
    except ValueError:
        return  # aiohttp will refuse it too
    except IndexError:
        # yarl fails so on some URLs ("http://[x]y@/"), and aiohttp with it, outside its own
        # errors: refused here as aiohttp refuses the URLs yarl rejects cleanly.
        raise aiohttp.InvalidUrlClientError(url) from None
    if policy.host_allowed(host):
        return
    if literal_ip(host) and not policy.permits(host):
        raise BlockedAddress(f"address {host} is not allowed")


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses the name if any of its addresses is
    forbidden: connecting to the permitted ones only would still let a name that lists both a
    public and a private address pick its target."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None,
                 approved: set[str] | None = None) -> None:
        self.policy = policy
        self.inner = inner or ThreadedResolver()
        # Addresses of hosts allowed by name, for guarded_socket_factory, which sees only
        # addresses. Bounded: it is rebuilt from fresh resolutions when it fills up.
        self.approved = approved if approved is not None else set()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            results = await self.inner.resolve(host, port, family)
        except UnicodeError:
            # getaddrinfo IDNA-encodes the name and raises UnicodeError (not OSError, which
            # aiohttp turns into a connection error) for a label over 63 characters: a URL
            # from an application's response ended the call flow with a Traceback.
            raise socket.gaierror(socket.EAI_NONAME, f"{host[:80]!r} is not a host name") \
                from None
        if self.policy.host_allowed(host):
            if len(self.approved) > 1024:
                self.approved.clear()
            self.approved.update(r["host"] for r in results)
            return results
        for r in results:
            if not self.policy.permits(r["host"]):
                raise BlockedAddress(f"{host} resolves to {r['host']}, which is not allowed")
        return results

    async def close(self) -> None:
        await self.inner.close()


def blocked_cause(exc: BaseException) -> BlockedAddress | None:
    """The BlockedAddress behind an aiohttp connection error, if that is what it was."""
    if isinstance(exc, BlockedAddress):
        return exc
    inner = getattr(exc, "os_error", None) or exc.__cause__
    return inner if isinstance(inner, BlockedAddress) else None


def guarded_socket_factory(policy: AddressPolicy, approved: set[str] | None = None
                           ) -> Callable[[AddrInfo], socket.socket]:
    """The last check, on the very address a socket is about to connect to: whatever got
    past the resolver and the literal check (a parser quirk, a new aiohttp path) stops here.
    Its error is a plain connection failure; the checks before it give the clear message."""
    def make(addr_info: AddrInfo) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = str(sockaddr[0])
        if not policy.permits(address) and address not in (approved or ()):
            raise BlockedAddress(f"address {address} is not allowed")
        return socket.socket(family=family, type=type_, proto=proto)
    return make


def guarded_session(policy: AddressPolicy, limit: int, **kw: Any) -> aiohttp.ClientSession:
    approved: set[str] = set()
    connector = aiohttp.TCPConnector(
        limit=limit, resolver=GuardedResolver(policy, approved=approved),
        socket_factory=guarded_socket_factory(policy, approved))
    return aiohttp.ClientSession(connector=connector, **kw)


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, to EOF, refusing more than `limit` bytes: up front when Content-Length
    says so, else as the bytes arrive. (`content.read(n)` returns what is buffered so far,
    which is a truncated body whenever the server writes in more than one piece.)"""
    if resp.content_length is not None and resp.content_length > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def redact(url: str) -> str:
    """A URL fit for logs: no userinfo, no query or fragment (they often carry tokens)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
    except ValueError:
        return "<unparseable url>"
    query = "REDACTED" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
