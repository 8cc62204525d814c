"""Configuration of the SIP edge (Kamailio) in front of the gateway. See issue 3."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EdgeConfig:
    """Placeholder: the edge is not built yet. `enabled: false` keeps the gateway on its own."""

    enabled: bool = False
