"""Room recordings: one WAV file per recording, written by pjmedia as the room talks.

A recording is a receive-only listener of its room (media.rooms): the bridge mixes what
the room says into a recorder port on the SIP thread, which writes it to disk as it goes (no
Python in the audio path). This module decides when recordings start and stop, keeps their
rows in SQLite, and queues `recording.completed` when a file is complete.

Crash safety: pjmedia's writer buffers 4000 bytes, then stdio 4 KiB, so a killed process
loses at most about half a second (8 kHz, 16-bit) of what was said; its header still holds
zero sizes, which `repair_file` fixes at the next start (`recover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.conferences import StatusHook
from gateway.config import Application, Config
from gateway.files import private_dir
from gateway.store import Recording, Store
from gateway.timestamps import iso
from media.rooms import LinkChange, RoomBook, RoomError, RoomKey
from media.wavfix import HEADER_PEEK, WavHeaderError, WavRepair, plan_repair
from sip import commands as cmd

log = logging.getLogger("minivoice.recording")

MIB = 1024 * 1024
FINALISE_WAIT_S = 2.0  # how long to wait for pjmedia to write the header of a closed file
DISK_CHECK_S = 5.0


class RecordingRefused(Exception):
    """A recording that does not start: `reason` is disk_full | limit | no_room."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AlreadyRecording(Exception):
    def __init__(self, rec_id: str) -> None:
        super().__init__(f"the room is being recorded already ({rec_id})")
        self.rec_id = rec_id


@dataclass
class _Active:
    row: Recording
    key: RoomKey
    timer: asyncio.TimerHandle | None = None
    stopping: asyncio.Future[Recording] | None = None


def new_recording_id() -> str:
    return "rec_" + secrets.token_urlsafe(16)


def audio_path(rec_id: str) -> str:
    return f"/v1/recordings/{rec_id}/audio"


def repair_file(path: Path) -> WavRepair:
    """Fix the RIFF and data sizes of a WAV file left open by a killed writer (nothing is
    written if they are right). Raises WavHeaderError (or OSError)."""
    with path.open("r+b") as f:
        head = f.read(HEADER_PEEK)
        size = os.fstat(f.fileno()).st_size
        fix = plan_repair(head, size)
        if fix.changed:
            f.seek(4)
            f.write(fix.riff_size.to_bytes(4, "little"))
            f.seek(fix.data_size_offset)
            f.write(fix.data_size.to_bytes(4, "little"))
            f.truncate(fix.length)
    return fix


def public_view(row: Recording) -> dict[str, Any]:
    """A recording as the REST API shows it."""
    return {"id": row.rec_id, "room": row.room, "customer_id": row.customer_id,
            "status": row.status, "started_at": iso(row.started_at),
            "ended_at": iso(row.ended_at) if row.ended_at else None,
            "duration_s": row.duration_s, "reason": row.reason, "url": audio_path(row.rec_id)}


@dataclass
class Recordings:
    """The live recordings (at most one per room) and their rows."""

    cfg: Config
    store: Store
    book: RoomBook
    send: Callable[[cmd.Command], asyncio.Future[Any]]
    # Queue recording.completed for a finished recording: (its row, the event's data).
    emit: Callable[[Recording, dict[str, Any]], None]
    # The room's status_url and its application, if it has one.
    status_of: Callable[[RoomKey], StatusHook | None] = lambda key: None
    active: dict[str, _Active] = field(default_factory=dict)  # recording ID -> live one
    by_room: dict[RoomKey, str] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Recording]] = field(default_factory=set)

    @property
    def directory(self) -> Path:
        if self.cfg.recordings.dir:
            return Path(self.cfg.recordings.dir)
        return Path(self.cfg.database).parent / "recordings"

    def free_mb(self) -> float:
        return shutil.disk_usage(self.directory).free / MIB

    # -- start ------------------------------------------------------------------------
    async def start(self, key: RoomKey, app: Application, *, by: str) -> Recording:
        """Start recording the room `key` (it must have members). Its recording.completed goes
        to the room's status_url (signed for that URL's application) if it has one now, else
        to `app`'s event_url. Raises AlreadyRecording, RecordingRefused."""
        if key in self.by_room:
            raise AlreadyRecording(self.by_room[key])
        if key not in self.book.rooms:
            raise RecordingRefused("no_room", f"no room {key.name}")
        limits = self.cfg.recordings
        if len(self.active) >= limits.max_concurrent:
            self._refused(key, "limit", by)
            raise RecordingRefused("limit", f"{limits.max_concurrent} recordings are running "
                                            "(recordings.max_concurrent)")
        try:
            private_dir(self.directory)
            free = self.free_mb()
        except OSError as exc:
            log.warning("recording.failed", extra={"room": key.name, "error": str(exc),
                                                   "dir": str(self.directory)})
            raise RecordingRefused("error", "the recordings directory is not usable") from exc
        if free < limits.min_free_mb:
            self._refused(key, "disk_full", by, free_mb=round(free))
            raise RecordingRefused("disk_full", f"{free:.0f} MB free, below "
                                                f"recordings.min_free_mb ({limits.min_free_mb})")
        status = self.status_of(key)
        rec_id = new_recording_id()
        path = self.directory / f"{rec_id}.wav"
        row = Recording(rec_id, key.customer_id, key.name, status.app_id if status else app.id,
                        status.url if status else None, time.time(), None, None,
                        "recording", str(path), None)
        self.store.recording_add(row)
        act = _Active(row, key)
        self.active[rec_id] = act
        self.by_room[key] = rec_id
        try:
            await self.send(cmd.StartRecording(rec_id, str(path)))
        except Exception as exc:
            del self.active[rec_id]
            del self.by_room[key]
            self.store.recording_end(rec_id, status="failed", ended_at=time.time(),
                                     duration_s=0, reason="error")
            log.warning("recording.failed", extra={"recording_id": rec_id, "room": key.name,
                                                   "error": str(exc)})
            raise RecordingRefused("error", "the recorder could not be created") from exc
        log.info("recording.started", extra={"recording_id": rec_id, "room": key.name,
                                             "customer_id": key.customer_id, "by": by})
        try:
            self._apply(self.book.add_listener(key, rec_id))
        except RoomError:  # the room ended while the recorder was being opened
            await self.stop(rec_id, "room_ended")
            return self.store.recording_get(rec_id) or row
        if limits.max_duration_s:
            act.timer = asyncio.get_running_loop().call_later(
                limits.max_duration_s, self._stop_soon, rec_id, "max_duration")
        return row

    def _refused(self, key: RoomKey, reason: str, by: str, **extra: Any) -> None:
        log.warning("recording.refused", extra={"room": key.name, "customer_id": key.customer_id,
                                                "reason": reason, "by": by, **extra})

    # -- stop -------------------------------------------------------------------------
    def _stop_soon(self, rec_id: str, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self.stop(rec_id, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    def room_ended(self, key: RoomKey) -> None:
        """The room is gone (its listener links went with it): close its recording."""
        rec_id = self.by_room.get(key)
        if rec_id is not None:
            self._stop_soon(rec_id, "room_ended")

    async def stop(self, rec_id: str, reason: str) -> Recording:
        """Stop a live recording, wait for its file to be complete, queue recording.completed;
        the finished row. Stopping one that is stopping already waits for that."""
        act = self.active.get(rec_id)
        if act is None:
            row = self.store.recording_get(rec_id)
            if row is None:
                raise KeyError(rec_id)
            return row
        if act.stopping is not None:
            return await asyncio.shield(act.stopping)
        act.stopping = asyncio.get_running_loop().create_future()
        try:
            row = await self._stop(act, reason)
        except BaseException as exc:
            act.stopping.set_exception(exc)
            act.stopping.exception()  # retrieved: no "never retrieved" warning
            raise
        act.stopping.set_result(row)
        return row

    async def _stop(self, act: _Active, reason: str) -> Recording:
        rec_id = act.row.rec_id
        if act.timer is not None:
            act.timer.cancel()
        self._apply(self.book.remove_listener(act.key, rec_id))
        try:
            await self.send(cmd.StopRecording(rec_id))
        finally:
            self.active.pop(rec_id, None)
            if self.by_room.get(act.key) == rec_id:
                del self.by_room[act.key]
        path = Path(act.row.path)
        fix = await self._finalised(path)
        ended = time.time()
        status, duration = ("completed", round(fix.duration_s, 3)) if fix else ("failed", 0.0)
        self.store.recording_end(rec_id, status=status, ended_at=ended, duration_s=duration,
                                 reason=reason)
        row = self.store.recording_get(rec_id) or act.row
        log.info("recording.completed", extra={"recording_id": rec_id, "room": act.key.name,
                                               "duration_s": duration, "reason": reason,
                                               "status": status})
        self.emit(row, completed_data(row))
        return row

    async def _finalised(self, path: Path) -> WavRepair | None:
        """The file's final header: pjmedia writes it as the bridge drops the port, a clock
        tick or so after StopRecording. If it has not within FINALISE_WAIT_S, fix it here."""
        deadline = time.monotonic() + FINALISE_WAIT_S
        while True:
            try:
                with path.open("rb") as f:
                    fix = plan_repair(f.read(HEADER_PEEK), os.fstat(f.fileno()).st_size)
                if not fix.changed:
                    return fix
            except (OSError, WavHeaderError):
                pass
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        try:
            return repair_file(path)
        except (OSError, WavHeaderError) as exc:
            log.warning("recording.unreadable", extra={"path": str(path), "error": str(exc)})
            return None

    async def stop_all(self, reason: str) -> None:
        """Stop every recording, and wait for those stopping already (at shutdown)."""
        await asyncio.gather(*(self.stop(r, reason) for r in list(self.active)),
                             *self._tasks, return_exceptions=True)

    async def check_disk(self) -> None:
        """Stop every recording when the free space falls below the floor."""
        if not self.active:
            return
        try:
            free = self.free_mb()
        except OSError:
            return
        if free < self.cfg.recordings.min_free_mb:
            log.warning("recording.disk_full", extra={"free_mb": round(free),
                                                      "recordings": len(self.active)})
            await self.stop_all("disk_full")

    # -- start-up and retention ----------------------------------------------------------
    def recover(self) -> list[Recording]:
        """Recordings the previous process left running: repair each file's header and
        complete its row (reason gateway_restart); the rows, for their events."""
        done = []
        for row in self.store.recordings_in_progress():
            path = Path(row.path)
            try:
                fix: WavRepair | None = repair_file(path)
            except (OSError, WavHeaderError) as exc:
                log.warning("recording.unrepairable", extra={"recording_id": row.rec_id,
                                                             "error": str(exc)})
                fix = None
            ended = row.started_at
            with contextlib.suppress(OSError):
                ended = path.stat().st_mtime
            self.store.recording_end(
                row.rec_id, status="completed" if fix else "failed", ended_at=ended,
                duration_s=round(fix.duration_s, 3) if fix else 0.0, reason="gateway_restart")
            done.append(self.store.recording_get(row.rec_id) or row)
            log.warning("recording.recovered", extra={
                "recording_id": row.rec_id, "room": row.room,
                "duration_s": round(fix.duration_s, 3) if fix else 0,
                "repaired": bool(fix and fix.changed)})
        return done

    def prune(self, older_than: float) -> int:
        """Delete recordings (file and row) that ended before `older_than`."""
        count = 0
        while True:
            rows = self.store.recordings_expired(older_than)
            for row in rows:
                with contextlib.suppress(FileNotFoundError):
                    Path(row.path).unlink()
                self.store.recording_delete(row.rec_id)
                count += 1
            if len(rows) < 1000:
                return count

    def _apply(self, change: LinkChange) -> None:
        if change:
            fut = self.send(cmd.ApplyLinks(change.connect, change.disconnect))
            fut.add_done_callback(_log_failure)


def completed_data(row: Recording) -> dict[str, Any]:
    """`data` of recording.completed."""
    return {"recording_id": row.rec_id, "room": row.room, "duration_s": row.duration_s,
            "url": audio_path(row.rec_id), "status": row.status, "reason": row.reason}


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("recording command failed", extra={"error": str(fut.exception())})
