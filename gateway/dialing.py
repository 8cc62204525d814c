"""Where an application may send the gateway's outbound calls (transfer, POST /v1/calls).

A SIP URI in an application's response is input from outside, like a URL in one: without a
check, `sip:x@10.0.0.5` or `sip:x@169.254.169.254:80` makes the gateway send INVITEs into the
operator's own network, and a host name is resolved by pjsip on the SIP thread, where a slow
DNS server stalls every call's signalling. So the gateway resolves the host itself, on the
event loop with a time limit, refuses non-public addresses unless `dialing.allow_private`
lists them (the same rules as `hooks.allow_private`: netguard.AddressPolicy), and dials the
address it checked: a name cannot resolve to one address when checked and another when
dialed. Host names are resolved to A/AAAA records as pjsip does without a nameserver (no
SRV/NAPTR). Registered users (dialed through the operator's own edge) and the cluster's
cascade legs do not come through here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.netguard import AddressPolicy

DEFAULT_SIP_PORT = 5060
MAX_ADDRESSES = 16  # a name answering with more than this is refused, not truncated

# scheme : user @ host [: port] [;params] [?headers]. One '@' only: "sip:a@evil@good" is read
# differently by different parsers, the classic way around a host check.
_URI = re.compile(
    r"(?P<scheme>sips?):(?P<user>[^@\s<>\"]{1,250})@"
    r"(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<rest>[;?][^@\s<>\"]{0,500})?")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

Resolver = Callable[..., Awaitable[Sequence[tuple[Any, ...]]]]


class TargetRefused(ValueError):
    """The target may not be dialed; the message says why (it goes to the application)."""


class TargetMalformed(TargetRefused):
    """Not a SIP URI this gateway dials."""


class TargetUnresolvable(TargetRefused):
    """The host name did not resolve (in time)."""


@dataclass(frozen=True)
class SipTarget:
    scheme: str
    user: str
    host: str  # as written: a name, an IPv4 literal or a bracketed IPv6 literal
    port: int | None
    rest: str  # ";params?headers", as written

    @property
    def literal(self) -> str | None:
        """The host's address if it is an IP literal."""
        try:
            return str(ipaddress.ip_address(self.host.strip("[]")))
        except ValueError:
            return None

    def with_address(self, address: str) -> str:
        ip = ipaddress.ip_address(address)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}:{self.user}@{host}{port}{self.rest}"


def parse_target(uri: str) -> SipTarget:
    """A SIP URI split into its parts, or TargetRefused for anything ambiguous or malformed."""
    m = _URI.fullmatch(uri)
    if m is None:
        raise TargetMalformed("not a SIP URI of the form sip:user@host[:port][;params]")
    host, port = m["host"], m["port"]
    target = SipTarget(m["scheme"], m["user"], host, int(port) if port else None,
                       m["rest"] or "")
    if target.port is not None and not 1 <= target.port <= 65535:
        raise TargetMalformed(f"port {target.port} is out of range")
    if host.startswith("["):
        if target.literal is None or ipaddress.ip_address(target.literal).version != 6:
            raise TargetMalformed(f"{host} is not an IPv6 address")
    elif target.literal is None:
        labels = host.rstrip(".").split(".")
        if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
            raise TargetMalformed(f"{host!r} is not a host name or an IP address")
    return target


def check_addresses(target: SipTarget, addresses: Sequence[str], policy: AddressPolicy) -> str:
    """The address to dial: the first one (IPv4 before IPv6), if every one is allowed. A
    name that answers with a public and a private address is refused: a later resolution
    (a retry, another node) could dial the private one."""
    if not addresses:
        raise TargetUnresolvable(f"{target.host} has no address")
    if len(addresses) > MAX_ADDRESSES:
        raise TargetUnresolvable(f"{target.host} has more than {MAX_ADDRESSES} addresses")
    if not policy.host_allowed(target.host):
        for address in addresses:
            if not policy.permits(address):
                raise TargetRefused(
                    f"{target.host} is {address}, a non-public address "
                    "(the operator can allow it with dialing.allow_private)")
    return addresses[0]


async def pin(uri: str, policy: AddressPolicy, timeout_s: float,
              resolve: Resolver | None = None) -> str:
    """The URI to hand to the SIP stack: `uri` with its host replaced by the address checked."""
    target = parse_target(uri)
    if target.literal is not None:
        return target.with_address(check_addresses(target, [target.literal], policy))
    getaddrinfo = resolve or asyncio.get_running_loop().getaddrinfo
    try:
        infos = await asyncio.wait_for(
            getaddrinfo(target.host, target.port or DEFAULT_SIP_PORT,
                        type=socket.SOCK_DGRAM), timeout_s)
    except TimeoutError:
        raise TargetUnresolvable(f"{target.host} did not resolve within {timeout_s:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise TargetUnresolvable(f"{target.host} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    # IPv4 first: the gateway's SIP transports are usually IPv4 ("localhost" answers ::1 first)
    addresses.sort(key=lambda a: ":" in a)
    return target.with_address(check_addresses(target, addresses, policy))
