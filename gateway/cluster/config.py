"""The `cluster:` section of the gateway config.

    cluster:
      node_id: node-a                    # unique per node
      redis_url: redis://127.0.0.1:6379/0
      secret: a-long-shared-secret       # the same on every node: cascade legs, internal HTTP
      sip_address: 10.0.0.5:5080         # where the other nodes dial this node (host:port)
      http_url: http://10.0.0.5:8081     # where the other nodes reach this node's HTTP
      cascade_jitter_ms: 40              # cascade legs' jitter buffer; 0: adaptive

No `node_id`: a single node, nothing here is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.strict import between, checked, length, pattern
from sip.config import jb_max_ms_problem

# How many ticks a record refreshed every tick must last at least (cross_check).
LEASE_TICKS = 2
NODE_TTL_TICKS = 3

NODE_ID = pattern(r"[A-Za-z0-9_-]{1,64}", "1-64 of A-Z a-z 0-9 _ -")


@dataclass(frozen=True)
class ClusterConfig:
    node_id: str | None = checked(NODE_ID, default=None)
    redis_url: str = checked(pattern(r"(redis|rediss|unix)://\S{1,500}", "a redis:// URL"),
                             default="redis://127.0.0.1:6379/0")
    secret: str = checked(length(16, 256), default="")
    # host:port the other nodes send cascade INVITEs to; default sip.host (sip.public_host
    # if sip.host is a wildcard) with the bound SIP port.
    sip_address: str | None = checked(
        pattern(r"[A-Za-z0-9.\-\[\]:]{1,200}:\d{1,5}", "host:port"), default=None)
    # Base URL of this node's HTTP for the other nodes; default http://http.host:bound port
    # (http.host a wildcard: the host of the SIP address above).
    http_url: str | None = checked(pattern(r"https?://\S{1,500}", "an http(s):// URL"),
                                   default=None)
    # A room's owner renews its lease every tick; a dead owner's rooms are free after lease_s.
    lease_s: float = checked(between(1, 60), default=4.0)
    tick_s: float = checked(between(0.1, 10), default=1.0)
    # A node's liveness record lives this long without a refresh (every tick); so do its
    # per-customer call counts and its start_on_enter entries.
    node_ttl_s: float = checked(between(2, 600), default=10.0)
    # The jitter buffer of cascade legs, both ends: a buffer of at most this many ms with no
    # prefetch (sip.calls); 0, pjmedia's adaptive one, as every phone's. 40 ms: two 20 ms
    # packets, measured against the adaptive one in BENCHMARKS.md (cluster section).
    cascade_jitter_ms: int = checked(jb_max_ms_problem, default=40)

    @property
    def enabled(self) -> bool:
        return self.node_id is not None

    def _ticks(self, n: int) -> float:
        # rounded: 3 x 1.1 is 3.3000000000000003 in binary, and 3.3 must pass
        return round(n * self.tick_s, 6)

    def cross_check(self) -> list[tuple[str, str]]:
        problems = []
        if self.enabled and not self.secret:
            problems.append(("secret", "is required with node_id (16-256 characters, the "
                                       "same on every node)"))
        # Records refreshed every tick that must outlive a late tick or two (the refresh
        # itself takes a Redis round trip, and a busy loop runs it late): otherwise a live
        # node's record expires between two refreshes and the others act on it.
        if self.lease_s < self._ticks(LEASE_TICKS):
            problems.append(("lease_s", f"must be at least {LEASE_TICKS} x cluster.tick_s "
                             f"({self.tick_s:g}; it is {self.lease_s:g}): the owner "
                             "renews its rooms' leases every tick, and a room whose lease "
                             "lapses between renewals is taken over by another node"))
        if self.node_ttl_s < self._ticks(NODE_TTL_TICKS):
            problems.append(("node_ttl_s", f"must be at least {NODE_TTL_TICKS} x "
                             f"cluster.tick_s ({self.tick_s:g}; it is {self.node_ttl_s:g}): a node "
                             "refreshes its liveness record every tick, and is declared dead "
                             "(its calls reported lost, its cascade legs ended) when the "
                             "record expires between refreshes"))
        return problems


WILDCARDS = ("0.0.0.0", "::", "")


def node_hosts(sip_host: str, public_host: str | None, http_host: str) -> tuple[str, str]:
    """(host of our SIP, host of our HTTP) for the other nodes, unless sip_address/http_url
    say. SIP: the address it is bound to when that is a specific one, since that is where we
    listen (sip.public_host is for phones, maybe across a NAT the nodes are not behind), else
    sip.public_host. HTTP: http.host, but one bound to a wildcard (0.0.0.0 in a container)
    is reached at the SIP host: no other node can dial 0.0.0.0."""
    def literal(host: str) -> str:
        return f"[{host}]" if ":" in host else host
    host = next((h for h in (sip_host, public_host) if h and h not in WILDCARDS), "127.0.0.1")
    return literal(host), literal(host if http_host in WILDCARDS else http_host)
