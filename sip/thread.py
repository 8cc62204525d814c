"""The SIP thread: everything that touches pjsua2.

One thread creates the pjsua2 endpoint and owns every pj object (endpoint, transports,
account, calls, players, recorders, the conference bridge's links). It loops on
`libHandleEvents` and drains the command queue between turns; each command type has its
handler in one table. It never touches an asyncio object: events go out through `post`
(sip.engine.SipEngine batches them onto the loop). An exception inside one call's handling
is logged with the call ID and the loop goes on.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import queue
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import pjsua2 as pj

from media.rooms import MONITOR, Link, Player
from sip import commands as cmd
from sip import events as ev
from sip import pjconfig
from sip.calls import GatewayAccount, GatewayCall, PromptPlayer, RoomPlayer
from sip.config import SipConfig

log = logging.getLogger("minivoice.sip")

ZOMBIE_AFTER_S = 5.0  # a call pjsua could not hang up is finished without it after this
POLL_MS = 5  # libHandleEvents timeout: also the worst-case latency of a queued command
MEDIA_CHECK_EVERY_S = 5.0
# How long a stopped file player is kept before it is deleted. pjmedia (2.14 and later) removes
# a bridge port asynchronously and keeps the port alive by reference until then, but the
# pjsua2 AudioMediaPlayer is freed at once, and the player's end-of-file callback (posted to
# pjmedia's event thread at every end or rewind, before the stop) calls into that C++ object:
# freed, that is a segfault. A stopped player is disconnected first (the bridge stops reading
# it at its next tick, so no new end-of-file is posted), then deleted once any callback
# already posted has long been delivered.
PLAYER_GRACE_S = 1.0
_SIP_USER = re.compile(r"[A-Za-z0-9.+_-]{1,64}")


class Heartbeat(Protocol):
    """Where the thread stamps each turn of its loop (SipEngine.last_tick: the watchdog's
    and /healthz's view of it)."""

    last_tick: float


def describe(exc: Exception) -> str:
    """An exception as one line; pjsua2.Error's str() is empty, its info() says what failed."""
    info = getattr(exc, "info", None)
    if callable(info):
        with contextlib.suppress(Exception):
            return f"{type(exc).__name__}: {' '.join(str(info()).split())}"
    return f"{type(exc).__name__}: {exc}"


def from_uri(user: str, host: str, port: int) -> str:
    """The From URI of an outbound leg. A caller ID that is not a plain user part (it may come
    from an inbound caller's From) is not copied into a header: the gateway's own user is."""
    if not _SIP_USER.fullmatch(user):
        user = "minivoice"
    return f"sip:{user}@{host}:{port}"


class SipThread:
    """Everything here runs on the SIP thread."""

    def __init__(
        self,
        cfg: SipConfig,
        commands: queue.SimpleQueue[tuple[int, cmd.Command]],
        post: Callable[[ev.Event], None],
        handle: Heartbeat,
    ) -> None:
        self.cfg = cfg
        self.commands = commands
        self.post = post
        self.handle = handle
        self.calls: dict[str, GatewayCall] = {}  # by MiniVoice call ID
        self.players: dict[tuple[str, int], PromptPlayer] = {}  # by (call ID, play ID)
        self.recorders: dict[str, Any] = {}  # recording ID -> pj.AudioMediaRecorder
        # Every bridge link asked for and not yet undone: re-applied when a call's media
        # port is (re)created, e.g. after a re-INVITE, or when media comes up after the ask.
        self.links: set[Link] = set()
        self.finished_players: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        # Room players (wait music, beeps, announcements) by link endpoint name ("@...").
        self.room_players: dict[str, Any] = {}
        self.finished_room_players: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.graveyard: list[Any] = []  # calls to delete outside their own callbacks
        # Stopped players (disconnected) and when they may be deleted: see PLAYER_GRACE_S.
        self.morgue: collections.deque[tuple[float, Any]] = collections.deque()
        self.zombies: dict[str, float] = {}  # call ID -> when to give up a failed hang-up
        self.abandoned: list[Any] = []  # given-up calls: kept alive until libDestroy
        # Command type -> its handler; a handler's return value goes back in CommandDone.
        self.handlers: dict[type[Any], Callable[[Any], tuple[tuple[str, int], ...] | None]] = {
            cmd.Answer: self._answer,
            cmd.Hangup: self._hangup_command,
            cmd.ApplyLinks: self._apply_links,
            cmd.Play: self._play,
            cmd.StopPlay: self._stop_play,
            cmd.Dial: self._dial,
            cmd.QueryLevels: self._query_levels,
            cmd.StartRecording: self._start_recording,
            cmd.StopRecording: self._stop_recording,
            cmd.Shutdown: self._shutdown_command,
        }
        self.running = True

    def run(self) -> None:
        try:
            self._start()
        except Exception as exc:
            # describe(): a pjsua2.Error says what failed (e.g. the port in use) in info(),
            # and that is all there is to say; anything else gets its traceback.
            log.error("sip engine failed to start", extra={"error": describe(exc)},
                      exc_info=not callable(getattr(exc, "info", None)))
            self.post(ev.EngineFailed(describe(exc)))
            return
        self.post(ev.EngineStarted(self.port))
        next_media_check = time.monotonic() + MEDIA_CHECK_EVERY_S
        while self.running:
            self.handle.last_tick = time.monotonic()
            try:
                self.ep.libHandleEvents(POLL_MS)
            except Exception:
                log.exception("libHandleEvents raised")
            self._drain_commands()
            self._reap_players()
            self._reap_room_players()
            if self.graveyard:
                self.graveyard.clear()
            now = time.monotonic()
            while self.morgue and self.morgue[0][0] <= now:
                self.morgue.popleft()
            if now >= next_media_check:
                next_media_check = now + max(0.5, min(MEDIA_CHECK_EVERY_S,
                                                      self.cfg.media_timeout_s / 2))
                self._check_media(now)
        self._shutdown()

    def _start(self) -> None:
        self.pj = pj
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        self.writer = pjconfig.PjLogWriter()
        self.ep.libInit(pjconfig.endpoint_config(self.cfg, self.writer))
        self.ep.audDevManager().setNullDev()
        # The null device's playback port discards what it gets: large rooms send every
        # member there so that the bridge reads (and measures the level of) each member.
        self.monitor = self.ep.audDevManager().getPlaybackDevMedia()
        # Its TX level 0: the bridge still reads (decodes, measures) each member linked to it,
        # but our build skips mixing into a sink whose level is 0 (one 160-sample add per
        # member per 20 ms tick in a large room; sip/build/patches/0004).
        self.monitor.adjustTxLevel(0.0)
        port = self.cfg.port
        kinds = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP}
        for name in self.cfg.transports:
            tid = self.ep.transportCreate(kinds[name], pjconfig.transport_config(self.cfg, port))
            if port == 0:  # ephemeral: use the same port for the next transports
                port = self.ep.transportGetInfo(tid).localName.rsplit(":", 1)[1]
                port = int(port)
        self.port = port
        self.ep.libStart()
        self._set_codecs()
        self.account = GatewayAccount(self)
        self.account.create(pjconfig.account_config(self.cfg, port), True)
        log.info(
            "sip listening",
            extra={"host": self.cfg.host, "port": port, "transports": list(self.cfg.transports)},
        )

    def _set_codecs(self) -> None:
        wanted = [pjconfig.CODEC_IDS[c] for c in self.cfg.codecs]
        for info in self.ep.codecEnum2():
            cid = info.codecId
            prio = 255 - wanted.index(cid) if cid in wanted else 0
            self.ep.codecSetPriority(cid, prio)

    def _drain_commands(self) -> None:
        while True:
            try:
                req_id, command = self.commands.get_nowait()
            except queue.Empty:
                return
            error, value = None, None
            try:
                value = self._execute(command)
            except Exception as exc:
                error = describe(exc)
                log.warning("command failed", extra={"command": repr(command), "error": error})
            if req_id:
                self.post(ev.CommandDone(req_id, error, value))

    def _execute(self, c: cmd.Command) -> tuple[tuple[str, int], ...] | None:
        handler = self.handlers.get(type(c))
        if handler is None:
            raise ValueError(f"unknown command {c!r}")
        return handler(c)

    def _answer(self, c: cmd.Answer) -> None:
        self._call(c.call_id).answer_call(c.code, c.jb_max_ms)

    def _hangup_command(self, c: cmd.Hangup) -> None:
        call = self.calls.get(c.call_id)
        if call is not None:  # already gone: nothing to do
            self._hangup(call, c.code, c.reason, c.cause)

    def _stop_play(self, c: cmd.StopPlay) -> None:
        self._stop_player((c.call_id, c.play_id))

    def _query_levels(self, c: cmd.QueryLevels) -> tuple[tuple[str, int], ...]:
        return tuple((cid, self._rx_level(cid)) for cid in c.call_ids)

    def _shutdown_command(self, c: cmd.Shutdown) -> None:
        self.running = False

    def _rx_level(self, call_id: str) -> int:
        # pjsua2 names levels from the port's side: what a call *transmits* into the bridge
        # is what the caller says (getRxLevel would be the mix they hear).
        call = self.calls.get(call_id)
        return int(call.audio.getTxLevel()) if call is not None and call.audio else 0

    def _call(self, call_id: str) -> Any:
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(f"no live call {call_id}")
        return call

    def _apply_links(self, c: cmd.ApplyLinks) -> None:
        for player in c.start:
            self._start_room_player(player)
        # Calls that already hung up are skipped: pjsua removed their bridge ports.
        for link in c.disconnect:
            self.links.discard(link)
            src, dst = self._ports(link)
            if src is not None and dst is not None:
                src.stopTransmit(dst)
        for link in c.connect:
            self.links.add(link)
            self._transmit(link)
        for name in c.stop:
            self._stop_room_player(name)

    def _start_room_player(self, spec: Player) -> None:
        if spec.name in self.room_players:
            return
        # Wait music loops: a plain player, so that no Python runs on pjmedia's event thread
        # at each rewind; a one-shot reports its end through RoomPlayer.onEof2.
        player = pj.AudioMediaPlayer() if spec.loop else RoomPlayer(self, spec.name)
        try:
            player.createPlayer(spec.path, 0 if spec.loop else pj.PJMEDIA_FILE_NO_LOOP)
        except Exception as exc:
            # Its links find no port (silence); a one-shot is reported done so the room
            # forgets it.
            log.warning("room player failed", extra={"player": spec.name, "error": describe(exc)})
            if not spec.loop:
                self.post(ev.RoomPlayDone(spec.name))
            return
        self.room_players[spec.name] = player
        log.debug("room player", extra={"player": spec.name, "path": spec.path,
                                        "loop": spec.loop})

    def _stop_room_player(self, name: str) -> None:
        player = self.room_players.pop(name, None)
        # The room's change disconnected its links already; any left are undone here too: a
        # player is deleted only once nothing reads it (see PLAYER_GRACE_S).
        for link in [lk for lk in self.links if lk.src == name]:
            self.links.discard(link)
            dst = self._port(link.dst)
            if player is not None and dst is not None:
                with contextlib.suppress(Exception):
                    player.stopTransmit(dst)
        if player is not None:
            self._retire(player)

    def _retire(self, player: Any) -> None:
        """A disconnected player is deleted PLAYER_GRACE_S from now, on this thread."""
        self.morgue.append((time.monotonic() + PLAYER_GRACE_S, player))

    def _reap_room_players(self) -> None:
        while True:
            try:
                name = self.finished_room_players.get_nowait()
            except queue.Empty:
                return
            if name in self.room_players:  # the room stops it (ApplyLinks.stop)
                self.post(ev.RoomPlayDone(name))

    def _port(self, name: str) -> Any:
        """The bridge port of a link endpoint: a call's audio (None when gone or without
        media), the level monitor, a room player, or a recorder (a room listener)."""
        if name.startswith("@"):
            return self.monitor if name == MONITOR else self.room_players.get(name)
        if name in self.recorders:  # a room's listener
            return self.recorders[name]
        return getattr(self.calls.get(name), "audio", None)

    def _ports(self, link: Link) -> tuple[Any, Any]:
        """The bridge ports of a link's ends (None where a call is gone or has no media)."""
        return self._port(link.src), self._port(link.dst)

    def _transmit(self, link: Link) -> None:
        src, dst = self._ports(link)
        if src is not None and dst is not None:
            src.startTransmit(dst)

    def relink(self, call_id: str) -> None:
        """A call's bridge port is new: connect it again as the rooms say, and to the
        prompt it is hearing, if any."""
        for link in [lk for lk in self.links if call_id in (lk.src, lk.dst)]:
            self._transmit(link)
        call = self.calls.get(call_id)
        for (cid, _), player in self.players.items():
            if cid == call_id and call is not None and call.audio is not None:
                player.startTransmit(call.audio)

    def _start_recording(self, c: cmd.StartRecording) -> None:
        if c.rec_id in self.recorders:
            raise ValueError(f"recording {c.rec_id} exists")
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(c.path)  # pjmedia buffers 4000 bytes, then stdio 4 KiB
        # The bridge writes nothing to a port that nobody transmits to, which would drop
        # the stretches when the room is silent (everyone muted) from the file. The null
        # sound device's capture side, a source of silence, keeps its clock running.
        self.monitor.startTransmit(recorder)
        self.recorders[c.rec_id] = recorder
        for link in [lk for lk in self.links if lk.dst == c.rec_id]:
            self._transmit(link)
        log.info("recording.open", extra={"recording_id": c.rec_id, "path": c.path})

    def _stop_recording(self, c: cmd.StopRecording) -> None:
        recorder = self.recorders.pop(c.rec_id, None)
        self.links = {lk for lk in self.links if lk.dst != c.rec_id}
        if recorder is not None:
            self.graveyard.append(recorder)  # destroyed next turn, which closes the file

    def _play(self, c: cmd.Play) -> None:
        call = self._call(c.call_id)
        if call.audio is None:
            raise RuntimeError("call has no active audio")
        player = PromptPlayer(self, c.call_id, c.play_id)
        player.createPlayer(c.path, pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(call.audio)
        self.players[(c.call_id, c.play_id)] = player
        log.debug("play", extra={"call_id": c.call_id, "play_id": c.play_id, "path": c.path})

    def _stop_player(self, key: tuple[str, int]) -> None:
        player = self.players.pop(key, None)
        log.debug("stop player", extra={"call_id": key[0], "play_id": key[1],
                                        "found": player is not None})
        if player is not None:
            call = self.calls.get(key[0])
            if call is not None and call.audio is not None:
                player.stopTransmit(call.audio)
            self._retire(player)

    def _reap_players(self) -> None:
        while True:
            try:
                key = self.finished_players.get_nowait()
            except queue.Empty:
                return
            if key in self.players:
                self._stop_player(key)
                self.post(ev.PlayDone(*key))

    def _dial(self, c: cmd.Dial) -> None:
        # Every outbound leg goes through the gateway's one account; its From is set per call.
        # (One account per caller ID, as before, meant deleting accounts that live calls
        # still used: pjsua_acc_del zeroes the slot under them.)
        call = GatewayCall(self, self.account, call_id=c.call_id)
        call.jb_max_ms = c.jb_max_ms
        self.calls[c.call_id] = call
        prm = pj.CallOpParam(True)
        if c.from_user:
            prm.txOption.localUri = from_uri(c.from_user, self.cfg.public_host or self.cfg.host,
                                             self.port)
        for name, value in c.headers:
            header = pj.SipHeader()
            header.hName, header.hValue = name, value
            prm.txOption.headers.append(header)
        try:
            call.makeCall(c.uri, prm)
        except Exception:
            del self.calls[c.call_id]
            raise

    def _hangup(self, call: Any, code: int, reason: str, cause: str = "") -> None:
        """Hang up; if pjsua cannot (it could not build or send the response: seen once in
        100,000 fuzz cases, an INVITE whose answer had failed too), the call is given up
        after ZOMBIE_AFTER_S so the control plane still finishes it."""
        try:
            call.hangup_call(code, reason, cause)
        except Exception as exc:
            log.warning("hangup failed", extra={"call_id": call.call_id, "error": describe(exc)})
            self.zombies.setdefault(call.call_id, time.monotonic() + ZOMBIE_AFTER_S)

    def _reap_zombies(self, now: float) -> None:
        for call_id, deadline in list(self.zombies.items()):
            call = self.calls.get(call_id)
            if call is None:  # it did end after all
                del self.zombies[call_id]
                continue
            if now < deadline:
                continue
            del self.zombies[call_id]
            log.error("call.abandoned", extra={"call_id": call_id})
            # The pj object is kept, never deleted: pjsua may still refer to it.
            self.abandoned.append(call)
            self.calls.pop(call_id, None)
            self.links = {lk for lk in self.links if call_id not in (lk.src, lk.dst)}
            for key in [k for k in self.players if k[0] == call_id]:
                self._stop_player(key)
            call.audio = None
            self.post(ev.CallEnded(call_id, 500, "abandoned", True, "error"))

    def _check_media(self, now: float) -> None:
        self._reap_zombies(time.monotonic())
        if self.cfg.media_timeout_s <= 0:
            return
        for call in list(self.calls.values()):
            try:
                call.check_media(now, self.cfg.media_timeout_s)
            except Exception:
                log.exception("media check failed", extra={"call_id": call.call_id})

    # -- from calls.py ----------------------------------------------------------------
    def call_gone(self, call: Any) -> None:
        self.calls.pop(call.call_id, None)
        self.links = {lk for lk in self.links if call.call_id not in (lk.src, lk.dst)}
        for key in [k for k in self.players if k[0] == call.call_id]:
            self._stop_player(key)
        self.graveyard.append(call)

    def _hangup_all(self) -> None:
        # A separate function so no loop variable keeps a pj.Call alive past libDestroy().
        for call in list(self.calls.values()):
            try:
                call.hangup_call(503, "Service Unavailable")
            except Exception as exc:
                log.warning("hangup on shutdown failed",
                            extra={"call_id": call.call_id, "error": describe(exc)})

    def _shutdown(self) -> None:
        self._hangup_all()
        deadline = time.monotonic() + 2.0
        while self.calls and time.monotonic() < deadline:
            self.ep.libHandleEvents(20)
        # Players still playing are stopped like any other (disconnected, then deleted after
        # their grace period), not deleted while the bridge may still read them.
        for key in list(self.players):
            self._stop_player(key)
        for name in list(self.room_players):
            self._stop_room_player(name)
        while self.morgue and time.monotonic() < self.morgue[-1][0]:
            self.ep.libHandleEvents(20)
        self.calls.clear()
        self.monitor = None
        self.morgue.clear()
        self.recorders.clear()
        self.abandoned.clear()
        self.graveyard.clear()
        with contextlib.suppress(Exception):
            self.account.shutdown()
        del self.account
        gc.collect()
        self.ep.libDestroy()
        del self.ep
        log.info("sip engine stopped")
