"""Configuration of the SIP edge (Kamailio) in front of the gateway. See docs/edge.md.

    edge:
      enabled: true
      listen: 0.0.0.0          # where phones and trunks reach the edge
      udp_port: 5060
      tcp_port: 5060
      tls_port: 5061           # 0 turns TLS off
      trusted: [203.0.113.0/24]  # trunks / load generators: no digest auth
      digest_algorithms: [MD5]   # challenges offered, in order of preference

With the edge enabled the gateway's own SIP socket (`sip.host`) must be loopback: the edge is
the only way in, and it forwards to `sip.host:sip.port`. (Unless `address` says the edge runs
on its own, e.g. in its own container: then one specific address the edge reaches.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.strict import between, checked, length, pattern

_REALM = pattern(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,63}", "letters, digits, '.' and '-' (1-64)")


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address (the edge never resolves names)"
    return None


def _networks(values: tuple[str, ...]) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not an address or CIDR network (e.g. 192.168.1.0/24)"
    return None


DEFAULT_RELAY_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                          "100.64.0.0/10")

# What the edge's digest check can compute (route[VERIFY] in edge/kamailio.cfg.tmpl). The
# "-sess" variants and SHA-512-256 are not implemented there.
DIGEST_ALGORITHMS = ("SHA-256", "MD5")


def _algorithms(values: tuple[str, ...]) -> str | None:
    if not values:
        return "at least one algorithm is required (e.g. [MD5])"
    for v in values:
        if v not in DIGEST_ALGORITHMS:
            hint = next((a for a in DIGEST_ALGORITHMS if a.lower() == v.lower()), None)
            shown = v if len(v) <= 32 else v[:32] + "..."
            return (f"{shown!r} is not supported: use "
                    + " / ".join(map(repr, DIGEST_ALGORITHMS))
                    + (f" (spelled {hint!r})" if hint else ""))
    if len(set(values)) != len(values):
        return "each algorithm at most once"
    return None


def _nodes(values: tuple[str, ...]) -> str | None:
    if len(values) > 64:
        return "at most 64 nodes"
    for v in values:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or _ip(host):
            shown = v if len(v) <= 64 else v[:64] + "..."
            return f"{shown!r} is not ip:port (the edge never resolves names)"
    if len(set(values)) != len(values):
        return "each node at most once"
    return None


def _nonempty_networks(values: tuple[str, ...]) -> str | None:
    return _networks(values) if values else "at least one network is required"


@dataclass(frozen=True)
class EdgeConfig:
    enabled: bool = False
    # Kamailio's listening address; 0.0.0.0 = every interface.
    listen: str = checked(_ip, default="0.0.0.0")
    # Host:port written in Via/Record-Route when `listen` is 0.0.0.0 or behind NAT.
    advertise: str | None = checked(_ip, default=None)
    udp_port: int = checked(between(1, 65535), default=5060)
    tcp_port: int = checked(between(0, 65535), default=5060)  # 0: no TCP
    tls_port: int = checked(between(0, 65535), default=5061)  # 0: no TLS
    # PEM files; unset = a self-signed pair generated on first run under `runtime_dir`/tls.
    tls_cert: str | None = None
    tls_key: str | None = None
    realm: str = checked(_REALM, default="minivoice")
    # SQLite file with the SIP users (`python -m gateway users ...`), read live by Kamailio.
    users_db: str = checked(length(1, 4096), default="var/users.db")
    # Rendered kamailio.cfg, TLS pair, digest secret.
    runtime_dir: str = checked(length(1, 4096), default="var/edge")
    # Source networks let in without digest auth (carriers, SIPp). They are never banned.
    trusted: tuple[str, ...] = checked(_networks, default=())
    # Networks the edge may send requests to (the gateway, registered phones), and so the
    # only hosts a REGISTER may name in its Contact. Anything else is refused with 403, so the
    # edge can never be used as an open relay or made to call out to the Internet. Default:
    # loopback and the private ranges (RFC 1918, CGNAT 100.64/10); phones on public addresses
    # need their networks listed here.
    relay_networks: tuple[str, ...] = checked(_nonempty_networks, default=DEFAULT_RELAY_NETWORKS)
    # Contacts (phones) one user may have registered at once; lookup() forks to all of them.
    max_contacts: int = checked(between(1, 20), default=5)
    # Digest challenges offered, one WWW-/Proxy-Authenticate header each, in this order (RFC
    # 8760: the server's preference first). MD5 alone by default: some phones (Debian 12's
    # baresip 1.0.0) give up on a 401 that offers any other algorithm at all; see docs/edge.md.
    digest_algorithms: tuple[str, ...] = checked(_algorithms, default=("MD5",))
    # Banning: this many wrong digest answers (a wrong password or an unknown user: answers
    # the password check actually ran on) from one source within `failure_window_s`...
    ban_after_failures: int = checked(between(1, 1000), default=5)
    failure_window_s: int = checked(between(1, 86400), default=60)
    # ...or more than `flood_requests` requests per `flood_window_s` (Kamailio pike)...
    flood_requests: int = checked(between(2, 100000), default=60)
    flood_window_s: int = checked(between(1, 60), default=2)
    # ...and the source gets no answer at all for `ban_s` seconds. Trusted sources are never
    # banned, but requests over `trusted_flood_requests` per `flood_window_s` are dropped.
    trusted_flood_requests: int = checked(between(2, 1000000), default=2000)
    ban_s: int = checked(between(1, 86400), default=300)
    # How long a digest challenge (nonce) may be answered.
    nonce_ttl_s: int = checked(between(10, 3600), default=300)
    max_expires_s: int = checked(between(60, 86400), default=3600)
    # A TCP/TLS connection that has not registered or carried an authenticated (or trusted)
    # request is closed after this many idle seconds; one that has lives max_expires_s + 60.
    tcp_idle_s: int = checked(between(2, 3600), default=30)
    kamailio: str = checked(length(1, 4096), default="kamailio")
    children: int = checked(between(1, 64), default=4)
    # Kamailio's own log level: -1 errors only ... 3 debug.
    log_level: int = checked(between(-1, 3), default=1)
    # The edge as its own process at this address (its own container: `python -m gateway edge`)
    # instead of a child of `serve`. The gateway then sends calls for registered users here, and
    # its SIP socket (`sip.host`) may be a specific non-loopback address, the one network it
    # shares with the edge (docker-compose.yml). Unset: `serve` runs Kamailio itself.
    address: str | None = checked(_ip, default=None)
    # Several gateway nodes (a cluster, docs/cluster.md): "ip:port" of each node's SIP. The
    # edge then dispatches new calls among them (Kamailio's dispatcher: OPTIONS probing, a
    # node that does not answer is skipped). Empty: the one gateway of `sip:`.
    dispatch: tuple[str, ...] = checked(lambda v: _nodes(v), default=())

    def cross_check(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append(("tls_cert", "give both tls_cert and tls_key, or neither"))
        if self.tls_port and self.tls_port in (self.udp_port, self.tcp_port):
            problems.append(("tls_port", "must differ from udp_port and tcp_port"))
        return problems

    def probe_host(self) -> str:
        """An address of the edge reachable from this machine (0.0.0.0 is not one)."""
        return "127.0.0.1" if ipaddress.ip_address(self.listen).is_unspecified else self.listen


def from_edge(edge: EdgeConfig, source: str) -> bool:
    """Whether a SIP transport source ("ip:port", "[v6]:port") is the separate edge at
    `edge.address`, the gateway's only legitimate caller then. True when there is no separate
    edge (a child edge's gateway listens on loopback, out of everyone else's reach)."""
    if edge.address is None:
        return True
    host = source.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(edge.address)
    except ValueError:
        return False


def edge_registrar(edge: EdgeConfig) -> tuple[str, int]:
    """Where the gateway sends INVITEs for registered users (the edge's own SIP address)."""
    return (edge.address or edge.probe_host(), edge.udp_port)
