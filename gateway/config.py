"""Gateway configuration: YAML in, validated frozen dataclasses out.

Every problem in a file is reported at once, with its path, before anything starts:

    configs/demo.yaml: sip.port: must be <= 65535
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.cluster.config import ClusterConfig
from gateway.edge.config import EdgeConfig
from gateway.netguard import parse_allow
from gateway.strict import URL, ValidationError, between, checked, length, parse
from sip.config import SipConfig


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = checked(between(0, 65535), default=8080)
    # The live web console at / (gateway/console): rooms, talkers, mute/remove/end, recent
    # calls. Its data comes from the API, with the API's tokens.
    console: bool = False


def _networks_or_hosts(entries: tuple[str, ...]) -> str | None:
    try:
        parse_allow(entries)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class HooksConfig:
    connect_timeout_s: float = checked(between(0.05, 60), default=2.0)
    total_timeout_s: float = checked(between(0.1, 120), default=5.0)
    webhook_max_backoff_s: float = checked(between(1, 3600), default=300.0)
    webhook_give_up_after_s: float = checked(between(3600, 30 * 86400), default=86400.0)
    # URLs that come from application responses (gather action_url, redirect url, play url)
    # may not reach loopback, private, link-local (cloud metadata), ULA or other non-public
    # addresses, unless listed here: networks ("127.0.0.0/8", "10.1.0.0/16") or host names.
    # Operator-configured answer_url, fallback_url and event_url are not restricted.
    allow_private: tuple[str, ...] = checked(_networks_or_hosts, default=())


@dataclass(frozen=True)
class DialingConfig:
    # SIP URIs from applications (transfer, POST /v1/calls) may not reach loopback, private,
    # link-local, ULA or other non-public addresses unless listed here (networks or host
    # names, as hooks.allow_private). Host names are resolved by the gateway, within
    # resolve_timeout_s, and the checked address is dialed (gateway/dialing.py).
    allow_private: tuple[str, ...] = checked(_networks_or_hosts, default=())
    resolve_timeout_s: float = checked(between(0.1, 30), default=3.0)


@dataclass(frozen=True)
class RoomsConfig:
    # Rooms up to this size are a full mesh (everyone mixed for everyone). Larger rooms mix
    # only the current speakers, chosen every `speaker_poll_ms` from the members' levels.
    full_mesh_max: int = checked(between(2, 2000), default=20)
    max_speakers: int = checked(between(1, 32), default=6)
    speaker_level: int = checked(between(1, 255), default=10)  # pjmedia level 0-255
    speaker_hold_s: float = checked(between(0, 10), default=1.0)
    speaker_poll_ms: int = checked(between(20, 2000), default=100)
    # A conference action into a full room does not join: the call's next action runs.
    max_participants: int = checked(between(2, 100000), default=500)
    # DTMF in a room (*6 mute toggle, # leave) for `conference` actions that do not say.
    dtmf_controls: bool = False
    # REST announcements being prepared or playing in one room at a time (more: 429).
    max_announcements: int = checked(between(1, 20), default=3)
    # Distinct wait_url sounds (each a looping player) one room plays at once; a caller whose
    # sound is beyond them hears the room's first one.
    max_wait_sounds: int = checked(between(1, 64), default=4)


@dataclass(frozen=True)
class LimitsConfig:
    """Per-call and per-customer limits, and the HTTP connection pools."""

    # A call that lasts this long is hung up (hangup_cause max_call_duration). 0 = none.
    max_call_duration_s: float = checked(between(0, 30 * 86400), default=14400.0)
    # Action documents one call may fetch (answer_url + action_url + redirect): a redirect
    # loop would otherwise be a POST flood. The call fails with action_url_error past it.
    max_documents_per_call: int = checked(between(1, 100000), default=100)
    # Live calls (inbound and transfer legs) per customer; an INVITE over it is refused
    # with 486 Busy Here. None = only sip.max_calls applies.
    max_calls_per_customer: int | None = checked(between(1, 100000), default=None)
    # DTMF digits waiting for a gather (RFC 4733 digits arrive over RTP at the caller's
    # pace); later ones are dropped until the queue drains.
    max_dtmf_queue: int = checked(between(1, 10000), default=64)
    # Entries in a call's timeline (REST API, SQLite record); later ones are counted only.
    max_timeline_entries: int = checked(between(10, 100000), default=1000)
    # Connection pools, one each so one kind of traffic cannot starve another.
    answer_connections: int = checked(between(1, 10000), default=256)
    action_connections: int = checked(between(1, 10000), default=128)
    webhook_connections: int = checked(between(1, 10000), default=128)
    media_connections: int = checked(between(1, 10000), default=32)


@dataclass(frozen=True)
class MediaConfig:
    """Limits on prompt audio (play URLs, say text) and its conversion."""

    max_download_mb: int = checked(between(1, 1024), default=20)
    # Longer prompts are refused: a WAV by its header, anything else when the converter's
    # output reaches this length (its file size limit).
    max_prompt_s: float = checked(between(1, 7200), default=600.0)
    convert_timeout_s: float = checked(between(1, 600), default=30.0)
    convert_memory_mb: int = checked(between(64, 8192), default=512)
    # sox / espeak-ng processes at once (more wait their turn).
    max_conversions: int = checked(between(1, 64), default=2)
    # Converted prompts kept on disk; least recently used are deleted past this.
    cache_max_mb: int = checked(between(1, 1024 * 1024), default=1024)


@dataclass(frozen=True)
class ApiToken:
    token: str = checked(length(16, 256))
    # Scope: the token sees only this customer's calls and rooms; none = every customer.
    customer_id: str | None = None


@dataclass(frozen=True)
class ApiConfig:
    # Bearer tokens for /v1/*. With none, the API is open to whoever reaches http.host
    # (fine on 127.0.0.1 for development; a warning is logged at start).
    tokens: tuple[ApiToken, ...] = ()


@dataclass(frozen=True)
class ShutdownConfig:
    # On SIGTERM: refuse new calls (503) and let calls in progress run this long, then hang
    # up the rest. Ctrl-C (SIGINT), or a second signal, stops at once.
    drain_s: float = checked(between(0, 86400), default=30.0)


@dataclass(frozen=True)
class RecordsConfig:
    # Finished calls are kept in SQLite this long (GET /v1/calls/{id} after the call), and
    # finished recordings (their row and their file).
    retention_days: float = checked(between(0, 3650), default=7.0)


@dataclass(frozen=True)
class RecordingsConfig:
    """Room recordings: where the WAV files go and what a recording may take."""

    # Directory of the WAV files; none: `recordings/` next to the database.
    dir: str | None = None
    # Below this much free space on the directory's file system a recording does not start,
    # and the ones running are stopped (reason disk_full).
    min_free_mb: int = checked(between(0, 10 * 1024 * 1024), default=500)
    # Recordings running at once, over all rooms; more are refused (reason limit).
    max_concurrent: int = checked(between(1, 100000), default=100)
    # A recording is stopped after this long (reason max_duration); 0 = none.
    max_duration_s: float = checked(between(0, 30 * 86400), default=14400.0)


def _caller_ids(entries: tuple[str, ...]) -> str | None:
    for e in entries:
        if not re.fullmatch(r"[A-Za-z0-9.+_-]{1,64}\*?|\*", e):
            return f"{e!r}: must be a number or user name, or a prefix ending in '*'"
    return None


@dataclass(frozen=True)
class Application:
    id: str = checked(length(1, 64))
    customer_id: str = checked(length(1, 64))
    answer_url: str = checked(URL)
    event_url: str | None = checked(URL, default=None)
    fallback_url: str | None = checked(URL, default=None)
    # Required in a config file: requests used to be signed with a well-known default.
    secret: str = checked(length(8, 256), default="")
    # Dialed users/numbers (Request-URI user) this application answers; "*" matches all.
    numbers: tuple[str, ...] = ("*",)
    # Caller IDs (`from`) its calls placed through POST /v1/calls may use: exact values, or
    # prefixes ending in "*" ("+1555*"; "*" = any). None: it may not place calls.
    caller_ids: tuple[str, ...] = checked(_caller_ids, default=())

    def cross_check(self) -> Iterator[tuple[str, str]]:
        if not self.secret:
            yield "secret", "is required (8-256 characters: the key requests are signed with)"


@dataclass(frozen=True)
class Config:
    applications: tuple[Application, ...] = checked(
        lambda apps: None if apps else "at least one application is required"
    )
    sip: SipConfig = field(default_factory=SipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    dialing: DialingConfig = field(default_factory=DialingConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)
    database: str = "var/minivoice.db"
    # Serve the embedded demo application at /demo/* on the HTTP port.
    demo: bool = False
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    # Several nodes sharing rooms (docs/cluster.md); without cluster.node_id, one node.
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


class ConfigError(Exception):
    pass


class StartError(Exception):
    """A valid config the gateway cannot start with on this machine (a port already taken):
    `serve` says so in one line and exits 2, like a config error."""


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: Config, source: str = "config") -> None:
    """Rules about where the gateway listens, applied to the final config (after command-line
    overrides): an API without tokens is everyone's admin API, so it stays on loopback."""
    if not cfg.api.tokens and not is_loopback(cfg.http.host):
        raise ConfigError(
            f"{source} is invalid:\n  api.tokens: required when http.host is not a loopback "
            f"address (http.host is {cfg.http.host}): without tokens anyone who reaches "
            "the port controls every call")


def from_dict(data: Any, source: str = "config") -> Config:
    try:
        cfg = parse(Config, data)
    except ValidationError as exc:
        lines = "\n".join(f"  {d.path or '(top)'}: {d.reason}" for d in exc.details)
        raise ConfigError(f"{source} is invalid:\n{lines}") from None
    ids = [a.id for a in cfg.applications]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source} is invalid:\n  applications: duplicate id")
    return cfg


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    return from_dict(data, str(p))


def with_overrides(cfg: Config, **sections: dict[str, Any]) -> Config:
    """Return `cfg` with some fields of its sections replaced (command-line flags)."""
    changes = {
        name: dataclasses.replace(getattr(cfg, name), **values)
        for name, values in sections.items()
        if values
    }
    return dataclasses.replace(cfg, **changes)
