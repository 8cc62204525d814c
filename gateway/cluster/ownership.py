"""Who mixes a room, as plain data: the rules of room ownership across nodes.

Every room has at most one owner, the node that mixes it. The owner is recorded in Redis
with an **epoch**, a fencing token that grows on every change of owner, and a lease the
owner renews every tick. A node that has callers in a room it does not own bridges them to
the owner with one cascade leg that carries the epoch it saw; the owner accepts that leg
only at its own current epoch. So a stale owner (one whose lease lapsed while it was cut
off, and whose room someone else claimed with epoch+1) is harmless: its renewals fail, it
accepts no leg carrying the new epoch, and its next plan steps it down.

`plan` is the whole decision: what a node holds for one room + what Redis says -> the
steps to take. No I/O here; gateway.cluster.node carries the steps out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """A room's record in Redis: its owner, the epoch of this ownership, where to dial it."""

    owner: str
    epoch: int
    sip: str


@dataclass(frozen=True)
class Local:
    """What this node holds for one room."""

    callers: int  # local participants (cascade legs not counted)
    inbound_legs: int = 0  # cascade legs from other nodes (only while we own it)
    owned_epoch: int | None = None  # we own the room at this epoch
    bridge: Claim | None = None  # the owner our cascade leg goes to
    max_epoch_seen: int = 0  # the highest epoch this node has seen for the room
    # Redis has just come back empty: the owner we are bridged to gets one lease to put
    # its claim back before anyone else claims (else every Redis restart moves rooms).
    hold_off: bool = False


# -- steps --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TryClaim:
    """Create the claim if there is none, at an epoch above every one we have seen."""

    min_epoch: int


@dataclass(frozen=True)
class Renew:
    epoch: int


@dataclass(frozen=True)
class Adopt:
    """Redis says we own it (we just claimed it): mix here from now on."""

    claim: Claim


@dataclass(frozen=True)
class StepDown:
    """We owned it at `epoch` and no longer do: drop the legs we took in as owner."""

    epoch: int


@dataclass(frozen=True)
class Bridge:
    claim: Claim


@dataclass(frozen=True)
class Unbridge:
    pass


@dataclass(frozen=True)
class Release:
    epoch: int


@dataclass(frozen=True)
class Forget:
    """Nothing left of the room on this node."""


Step = TryClaim | Renew | Adopt | StepDown | Bridge | Unbridge | Release | Forget


def plan(me: str, local: Local, claim: Claim | None) -> tuple[Step, ...]:
    """The steps for one room, given what we hold and the claim read from Redis (None: no
    claim, or Redis did not answer and we know nothing newer)."""
    steps: list[Step] = []
    if local.callers == 0 and local.inbound_legs == 0:
        if local.owned_epoch is not None:
            steps.append(Release(local.owned_epoch))
        if local.bridge is not None:
            steps.append(Unbridge())
        steps.append(Forget())
        return tuple(steps)
    if claim is None:
        if local.owned_epoch is not None:
            # Ours, and the record is gone (Redis restarted, or our lease lapsed unseen):
            # renewing puts it back unless someone claimed a newer epoch meanwhile.
            return (Renew(local.owned_epoch),)
        if local.hold_off and local.bridge is not None:
            return ()
        return (TryClaim(local.max_epoch_seen),)
    if claim.owner == me:
        if local.owned_epoch == claim.epoch:
            return (Renew(claim.epoch),)
        if local.owned_epoch is not None and claim.epoch < local.owned_epoch:
            # An older record of ours than we hold (Redis lost writes): put ours back.
            return (Renew(local.owned_epoch),)
        steps.append(Adopt(claim))
        if local.bridge is not None:
            steps.append(Unbridge())
        return tuple(steps)
    # Someone else owns it.
    if local.owned_epoch is not None:
        steps.append(StepDown(local.owned_epoch))
    if local.callers > 0:
        if local.bridge != claim:
            if local.bridge is not None:
                steps.append(Unbridge())
            steps.append(Bridge(claim))
    elif local.bridge is not None:
        steps.append(Unbridge())
    return tuple(steps)


def admit_leg(owned_epoch: int | None, offered: int) -> str | None:
    """Whether the owner takes a cascade leg offered at epoch `offered`: None to accept,
    else why not. A leg carrying a newer epoch than ours means we are a stale owner."""
    if owned_epoch is None:
        return "not_owner"
    if offered < owned_epoch:
        return "stale_epoch"
    if offered > owned_epoch:
        return "newer_epoch"
    return None
