"""Files that hold secrets (signing secrets, HA1s, HMAC keys): owner-only from the first byte.

Creating a file and chmod-ing it afterwards leaves a moment when it exists with the umask's
mode (often 0644): these create it 0600 in the open() call itself.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def private_file(path: Path) -> None:
    """Create `path` (empty) owner-only, or take group and other access off an existing one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Replace `path`'s content with `text`, the file owner-only throughout."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)  # an older file made wider: narrow it before writing
        f.write(text)


def private_dir(path: Path) -> None:
    """Create the directory and missing parents 0700. An existing directory keeps its mode
    (it may be the operator's, e.g. the working directory); the files in it are 0600."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)
