"""SIP users of the edge: a SQLite table that Kamailio reads on every digest answer.

Only HA1 values are stored, never the password: HA1 = H(username:realm:password), once with
MD5 and once with SHA-256 (RFC 8760), because the digest response a phone sends can only be
checked with the HA1 of the algorithm it chose. Since HA1 includes the realm, changing
`edge.realm` means setting every password again (rows of another realm are ignored).

Kamailio opens the file itself (db_sqlite + sqlops) and queries it per request, so an add or
remove applies to the next REGISTER/INVITE without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.files import private_dir, private_file
from gateway.timestamps import iso

# Kept in sync with the username check in edge/kamailio.cfg.tmpl: the edge builds its SQL from
# the digest username only after matching this, so it never needs quoting.
USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_PASSWORD = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS sip_users (
    username   TEXT PRIMARY KEY,
    realm      TEXT NOT NULL,
    ha1_md5    TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


class UserError(Exception):
    """A user operation that cannot be done; the message is meant for the operator."""


@dataclass(frozen=True)
class SipUser:
    username: str
    realm: str
    created_at: str


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    data = f"{username}:{realm}:{password}".encode()
    if algorithm == "MD5":
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    if algorithm == "SHA-256":
        return hashlib.sha256(data).hexdigest()
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise UserError(f"invalid username {username!r}: use 1-64 letters, digits, '.', '_', '-'")


class UserStore:
    def __init__(self, path: str | Path, realm: str) -> None:
        self.path = Path(path)
        self.realm = realm

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        private_dir(self.path.parent)
        # HA1s are password equivalents (a digest answer needs nothing else): owner-only.
        private_file(self.path)
        # Kamailio holds read connections on the same file: wait rather than fail on a lock.
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            with conn:
                conn.execute(SCHEMA)
                yield conn
        finally:
            conn.close()

    def ensure(self) -> None:
        """Create the file and table (Kamailio's query fails on a missing table)."""
        with self._db():
            pass

    def add(self, username: str, password: str, *, replace: bool = False) -> bool:
        """Store a user; returns True if it was new. An existing user needs `replace`."""
        check_username(username)
        if len(password) < MIN_PASSWORD:
            raise UserError(f"password too short: at least {MIN_PASSWORD} characters")
        row = (username, self.realm, ha1("MD5", username, self.realm, password),
               ha1("SHA-256", username, self.realm, password),
               iso())
        with self._db() as db:
            exists = db.execute("SELECT 1 FROM sip_users WHERE username = ?",
                                (username,)).fetchone() is not None
            if exists and not replace:
                raise UserError(f"user {username!r} exists (use --replace to set a new password)")
            db.execute("INSERT OR REPLACE INTO sip_users VALUES (?, ?, ?, ?, ?)", row)
        return not exists

    def remove(self, username: str) -> None:
        with self._db() as db:
            if db.execute("DELETE FROM sip_users WHERE username = ?", (username,)).rowcount == 0:
                raise UserError(f"no user {username!r}")

    def exists(self, username: str) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM sip_users WHERE username = ?",
                              (username,)).fetchone() is not None

    def list(self) -> list[SipUser]:
        with self._db() as db:
            rows = db.execute(
                "SELECT username, realm, created_at FROM sip_users ORDER BY username").fetchall()
        return [SipUser(*r) for r in rows]

    def other_realm_count(self) -> int:
        """Users whose HA1 was made for another realm: they cannot authenticate."""
        with self._db() as db:
            (n,) = db.execute("SELECT count(*) FROM sip_users WHERE realm != ?",
                              (self.realm,)).fetchone()
        return int(n)
