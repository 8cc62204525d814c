"""Thin pjsua2 subclasses that turn callbacks into events. SIP thread only."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
from collections.abc import Callable
from typing import Any, Protocol

import pjsua2 as pj

from media.quality import QualityTally, StreamSample
from sip import events as ev
from sip.events import new_call_id
from sip.sdp import check_offer, sdp_body
from sip.sipmsg import request_uri, uri_user, x_headers


class Owner(Protocol):
    """What the pj objects here need from the SIP thread that owns them (sip.thread.SipThread).

    A Protocol rather than an import, so that calls.py does not import thread.py (thread.py
    imports this module): no cycle between the two, not even a TYPE_CHECKING one.
    """

    calls: dict[str, Any]
    finished_players: queue.SimpleQueue[tuple[str, int]]
    finished_room_players: queue.SimpleQueue[str]
    post: Callable[[ev.Event], None]

    def call_gone(self, call: Any) -> None: ...

    def relink(self, call_id: str) -> None: ...

log = logging.getLogger("minivoice.sip")

# A small jitter buffer (Answer/Dial.jb_max_ms > 0: a cluster's cascade leg, node to node on
# a LAN), as pjsua2 StreamInfo fields in ms. pjmedia's default for every other call is an
# adaptive buffer of 500 ms that never prefetches (jbInit 0) but keeps as much as the last
# burst of packets brought: after a stall of either end's 20 ms clock it holds a packet or
# two more and sheds them a frame every ~2 s. A capacity of jb_max_ms bounds that: a packet
# arriving at a full buffer pushes the oldest out (pjmedia counts in codec frames, 10 ms for
# G.711, rounding up). No prefetch: after an underrun the next packet plays at once.
def small_jitter_buffer(jb_max_ms: int) -> dict[str, int]:
    return {"jbInit": 0, "jbMinPre": -1, "jbMaxPre": -1, "jbMax": jb_max_ms}


def set_jitter_buffer(info: Any, settings: dict[str, int] | None) -> bool:
    """Write `settings` into a stream's info before pjsua creates the stream (pjsua2
    StreamInfo in Call.onStreamPreCreate; pjsua copies back only the jitter-buffer fields).
    Whether anything was set."""
    if not settings:
        return False
    for name, value in settings.items():
        setattr(info, name, value)
    return True


_CAUSE = re.compile(r"[a-z0-9_.-]{1,64}")


def warning_value(cause: str) -> str:
    """The Warning header value (RFC 3261 20.43, code 399: miscellaneous) naming the
    gateway's cause of a rejection or hang-up, e.g. `399 minivoice "answer_url_error"`;
    "" for no cause or anything that is not a plain cause name (nothing else goes on the
    wire)."""
    return f'399 minivoice "{cause}"' if _CAUSE.fullmatch(cause) else ""


class GatewayAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, thread: Owner) -> None:
        super().__init__()
        self.thread = thread

    def onIncomingCall(self, prm: Any) -> None:
        call: GatewayCall | None = None
        try:
            call = GatewayCall(self.thread, self, prm.callId)
            # Kept until DISCONNECTED whatever happens next: the object must outlive the call.
            self.thread.calls[call.call_id] = call
            msg = prm.rdata.wholeMsg
            problem = check_offer(sdp_body(msg))
            if problem is not None:
                # Refused before the control plane hears of it: no answer_url, no webhooks.
                log.info("invite.rejected", extra={"call_id": call.call_id, "sip_code": 488,
                                                   "reason": problem,
                                                   "source": prm.rdata.srcAddress})
                call.hangup_call(488, "Not Acceptable Here")
                return
            info = call.getInfo()
            ruri = request_uri(msg)
            event = ev.IncomingCall(
                call_id=call.call_id,
                sip_call_id=info.callIdString,
                from_uri=info.remoteUri,
                to_uri=info.localUri,
                from_user=uri_user(info.remoteUri),
                dialed=uri_user(ruri) or uri_user(info.localUri),
                source=prm.rdata.srcAddress,
                x_headers=x_headers(msg),
            )
            log.info("invite", extra={"call_id": call.call_id, "sip_call_id": event.sip_call_id,
                                      "from": event.from_uri, "dialed": event.dialed})
            self.thread.post(event)
        except Exception:
            log.exception("incoming call handling failed",
                          extra={"call_id": call.call_id if call else None})
            if call is not None:  # never leave an INVITE unanswered
                with contextlib.suppress(Exception):
                    call.hangup_call(500, "Server Internal Error")


class GatewayCall(pj.Call):  # type: ignore[misc]
    def __init__(self, thread: Owner, acc: pj.Account, pj_call_id: int = -1,
                 call_id: str | None = None) -> None:
        super().__init__(acc, pj_call_id)
        self.thread = thread
        self.call_id = call_id or new_call_id()
        self.outbound = call_id is not None
        self.audio: Any = None  # pj.AudioMedia once media is active
        self.audio_index = 0
        self.by_gateway = False
        self.cause = "normal"
        self.media_reported = False
        self.last_rx_pkts = -1
        self.last_rx_change = 0.0
        self.quality = QualityTally()
        self.confirmed = False
        # Set before the stream exists (answer, makeCall) and kept for the call's life, so a
        # re-INVITE or UPDATE that re-creates the stream gets the same jitter buffer.
        self.jb_max_ms = 0
        self.answered = False  # a 2xx was sent (answer_call): a hang-up is then a BYE

    # -- commands ------------------------------------------------------------------
    def answer_call(self, code: int, jb_max_ms: int = 0) -> None:
        self.jb_max_ms = jb_max_ms or self.jb_max_ms
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        self.answer(prm)
        self.answered = self.answered or 200 <= code < 300

    def hangup_call(self, code: int, reason: str, cause: str = "") -> None:
        self.by_gateway = True
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        if reason:
            prm.reason = reason
        # Warning is a response header (RFC 3261 20.43): on the final response that rejects
        # an INVITE, not on a BYE or CANCEL.
        warning = "" if self.outbound or self.answered else warning_value(cause)
        if warning:
            h = pj.SipHeader()
            h.hName = "Warning"
            h.hValue = warning
            prm.txOption.headers.append(h)
        self.hangup(prm)

    # -- callbacks -----------------------------------------------------------------
    def onCallState(self, prm: Any) -> None:
        try:
            info = self.getInfo()
            if self.outbound and info.state == pj.PJSIP_INV_STATE_EARLY:
                self.thread.post(ev.CallProgress(self.call_id, int(info.lastStatusCode)))
            if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
                self.confirmed = True
                self.thread.post(ev.CallAnswered(self.call_id))
            elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.audio = None
                # pjsua destroyed the streams before this callback (onStreamDestroyed took
                # their statistics); whatever happens, the call still ends.
                quality = None
                with contextlib.suppress(Exception):
                    quality = self.quality.freeze()
                code = int(info.lastStatusCode)
                final = None if self.outbound else (200 if self.confirmed else code)
                self.thread.post(
                    ev.CallEnded(self.call_id, code, info.lastReason, self.by_gateway,
                                 self.cause, quality, final)
                )
                self.thread.call_gone(self)
        except Exception:
            log.exception("call state handling failed", extra={"call_id": self.call_id})

    def onCallMediaState(self, prm: Any) -> None:
        try:
            info = self.getInfo()
            for i, mi in enumerate(info.media):
                if (mi.type == pj.PJMEDIA_TYPE_AUDIO
                        and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE):
                    self.audio = self.getAudioMedia(i)
                    self.audio_index = i
                    # After a hold or another re-INVITE the bridge port may have been
                    # re-created, even under the same slot number: connect it again on
                    # every ACTIVE report (connecting an existing link is harmless).
                    self.thread.relink(self.call_id)
                    if not self.media_reported:
                        self.media_reported = True
                        codec = self.getStreamInfo(i).codecName
                        self._log_jitter_buffer("media.ready", i, codec=codec)
                        self.thread.post(ev.MediaReady(self.call_id, codec))
                    return
        except Exception:
            log.exception("media state handling failed", extra={"call_id": self.call_id})

    def onStreamDestroyed(self, prm: Any) -> None:
        # The last moment a stream's statistics exist: pjsua calls this from inside
        # pjsua_media_channel_deinit, before DISCONNECTED is reported (the far end hung up)
        # and before our own hangup() reports it, and on a re-INVITE that re-creates the
        # stream. getStreamStat raises once the stream is gone: never let that out of here.
        try:
            idx = int(prm.streamIdx)
            stat = self.getStreamStat(idx)
            codec = str(self.getStreamInfo(idx).codecName)
            rtcp = stat.rtcp
            jb = stat.jbuf
            log.info("stream.jitter_buffer", extra={
                "call_id": self.call_id, "jitter_buffer": self._jb_kind(),
                "jb_max_prefetch": int(jb.maxPrefetch), "avg_delay_ms": int(jb.avgDelayMsec),
                "max_delay_ms": int(jb.maxDelayMsec), "lost": int(jb.lost),
                "discard": int(jb.discard), "empty": int(jb.empty)})
            self.quality.add(StreamSample(
                codec=codec,
                rx_packets=int(rtcp.rxStat.pkt),
                rx_lost=int(rtcp.rxStat.loss),
                jitter_ms=float(rtcp.rxStat.jitterUsec.mean) / 1000.0,
                jitter_samples=int(rtcp.rxStat.jitterUsec.n),
                rtt_ms=float(rtcp.rttUsec.mean) / 1000.0,
                rtt_samples=int(rtcp.rttUsec.n),
                tx_packets=int(rtcp.txStat.pkt),
                tx_lost=int(rtcp.txStat.loss),
            ))
        except Exception as exc:
            log.debug("stream stats unavailable",
                      extra={"call_id": self.call_id, "error": f"{type(exc).__name__}"})

    def onStreamPreCreate(self, prm: Any) -> None:
        # Once per stream creation (answer, 200 OK, a re-INVITE or UPDATE re-creating it), on
        # the SIP thread; never per frame. Nothing may escape into pjsua.
        if not self.jb_max_ms:
            return
        try:
            if prm.streamInfo.type == pj.PJMEDIA_TYPE_AUDIO:
                set_jitter_buffer(prm.streamInfo, small_jitter_buffer(self.jb_max_ms))
        except Exception:
            log.exception("jitter buffer setting failed", extra={"call_id": self.call_id})

    def _jb_kind(self) -> str:
        return f"max_{self.jb_max_ms}ms" if self.jb_max_ms else "adaptive"

    def _log_jitter_buffer(self, what: str, idx: int, **more: Any) -> None:
        """One line with the stream's jitter buffer as pjmedia has it (read back from the
        buffer, not from our settings)."""
        try:
            jb = self.getStreamStat(idx).jbuf
            log.info(what, extra={"call_id": self.call_id, **more,
                                  "jitter_buffer": self._jb_kind(),
                                  "jb_min_prefetch": int(jb.minPrefetch),
                                  "jb_max_prefetch": int(jb.maxPrefetch)})
        except Exception as exc:
            log.debug("jitter buffer state unavailable",
                      extra={"call_id": self.call_id, "error": f"{type(exc).__name__}"})

    def onCallRxOffer(self, prm: Any) -> None:
        # A re-INVITE or UPDATE offer gets the same check as the first one; pjsua answers 488
        # and the call goes on with the media it had.
        try:
            problem = check_offer(prm.offer.wholeSdp)
        except Exception:
            problem = "offer could not be read"
        if problem is not None:
            log.info("reoffer.rejected", extra={"call_id": self.call_id, "reason": problem})
            prm.statusCode = 488

    def onDtmfDigit(self, prm: Any) -> None:
        # May run on a media thread: only post an event, touch no pj object.
        try:
            method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
            self.thread.post(ev.DtmfDigit(self.call_id, prm.digit, method))
        except Exception:
            log.exception("dtmf handling failed", extra={"call_id": self.call_id})

    def check_media(self, now: float, timeout: float) -> None:
        """Hang up a call whose RTP has stopped for `timeout` seconds."""
        if self.audio is None:
            return
        pkts = self.getStreamStat(self.audio_index).rtcp.rxStat.pkt
        if pkts != self.last_rx_pkts:
            self.last_rx_pkts, self.last_rx_change = pkts, now
        elif now - self.last_rx_change >= timeout:
            log.info("media timeout", extra={"call_id": self.call_id, "seconds": timeout})
            self.cause = "media_timeout"
            self.hangup_call(200, "media timeout")


class PromptPlayer(pj.AudioMediaPlayer):  # type: ignore[misc]
    """Plays one file once to one call. End of file is reported through the SIP thread."""

    def __init__(self, thread: Owner, call_id: str, play_id: int) -> None:
        super().__init__()
        self.thread = thread
        self.key = (call_id, play_id)

    def onEof2(self) -> None:
        # Called on the media clock thread: hand the key to the SIP thread, nothing more
        # (a player must not be destroyed inside its own callback).
        self.thread.finished_players.put(self.key)


class RoomPlayer(pj.AudioMediaPlayer):  # type: ignore[misc]
    """A beep or announcement played once into a room, a bridge source shared by its
    listeners; its end is reported through the SIP thread. (Looping wait music is a plain
    pj.AudioMediaPlayer: nothing to report.)"""

    def __init__(self, thread: Owner, name: str) -> None:
        super().__init__()
        self.thread = thread
        self.name = name

    def onEof2(self) -> None:
        # pjmedia's event thread: only hand the name over (see PromptPlayer).
        self.thread.finished_room_players.put(self.name)
