"""A bank of test softphones in one pjsua2 process, driven by JSON lines.

    python tests/phonebank.py --rtp-port-start 30000 [--bind 127.0.0.1]

stdin, one JSON object per line:
    {"op": "call", "id": "a", "uri": "sip:1001@127.0.0.1:5060", "from": "+15550001",
     "tone_hz": 440, "record": "/tmp/a.wav", "transport": "udp"}
        optional "tone_dbfs": the tone's level, -60 to 0 dBFS (default -12)
        optional "headers": [["X-Name", "value"], ...], extra INVITE headers
    {"op": "hangup", "id": "a"}
    {"op": "dtmf", "id": "a", "digits": "1#", "method": "rfc4733" | "info"}
    {"op": "hold", "id": "a"}, {"op": "unhold", "id": "a"}   (re-INVITEs)
    {"op": "register", "user": "bob", "password": "...", "domain": "127.0.0.1:5060",
     "registrar": "sip:127.0.0.1:5060"}   then {"op": "call", ..., "account": "bob"}
    {"op": "listen", "mode": "answer" | "busy" | "ring", "tone_hz": 700, "record": "/tmp/in"}
        incoming calls from now on are answered (playing the tone, recorded to
        <record>-<id>.wav), rejected 486, or left ringing; they get IDs in1, in2, ...
    {"op": "quit"}
stdout, one JSON object per line:
    {"event": "ready", "port": 40001}
    {"event": "state", "id": "a", "state": "CONFIRMED", "code": 200}
    {"event": "media", "id": "a", "codec": "PCMU"}
    {"event": "ended", "id": "a", "code": 200, "reason": "Normal call clearing"}
    {"event": "incoming", "id": "in1", "from": "<sip:+1555@127.0.0.1>"}
    {"event": "error", "id": "a", "error": "..."}

Each call plays its own looped WAV tone into the call and records what it hears
to its own WAV file, so a test can check with numpy who hears whom. Like the
gateway, one thread owns every pj object.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
from typing import Any

import pjsua2 as pj

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import contextlib

from media.tones import silence, sine, write_wav


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Listener(pj.Account):  # type: ignore[misc]
    """The default account, and registered accounts: incoming calls land here."""

    count = 0  # shared: incoming call IDs in1, in2, ... are unique across accounts

    def __init__(self, bank: Bank, user: str = "") -> None:
        super().__init__()
        self.bank = bank
        self.user = user

    def onRegState(self, prm: Any) -> None:
        emit(event="registered", user=self.user, code=prm.code)

    def onIncomingCall(self, prm: Any) -> None:
        Listener.count += 1
        cid = f"in{Listener.count}"
        mode = self.bank.listen
        tone = self.bank.tone_file(int(mode["tone_hz"])) if mode.get("tone_hz") else None
        record = f"{mode['record']}-{cid}.wav" if mode.get("record") else None
        phone = Phone(self.bank, self, cid, tone, record, prm.callId)
        self.bank.phones[cid] = phone
        emit(event="incoming", id=cid, **{"from": phone.getInfo().remoteUri})
        op = pj.CallOpParam(True)
        if mode.get("mode", "answer") == "answer":
            op.statusCode = 200
        elif mode["mode"] == "busy":
            op.statusCode = 486
        else:
            op.statusCode = 180
        phone.answer(op)


class Phone(pj.Call):  # type: ignore[misc]
    def __init__(self, bank: Bank, acc: pj.Account, cid: str, tone: str | None,
                 record: str | None, pj_call_id: int = -1) -> None:
        super().__init__(acc, pj_call_id)
        self.bank, self.cid, self.tone, self.record = bank, cid, tone, record
        self.player: Any = None
        self.recorder: Any = None
        self.audio: Any = None

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.stop_media()
            emit(event="ended", id=self.cid, code=info.lastStatusCode, reason=info.lastReason)
            self.bank.gone(self)
        else:
            emit(event="state", id=self.cid, state=info.stateText, code=info.lastStatusCode)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for i, mi in enumerate(info.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                # Connect on every ACTIVE report: after a hold the port may be re-created
                # (even under the same slot number); connecting twice is harmless.
                first = self.audio is None
                self.audio = self.getAudioMedia(i)
                if self.tone:
                    if self.player is None:
                        self.player = pj.AudioMediaPlayer()
                        self.player.createPlayer(self.tone, 0)  # 0 = loop
                    self.player.startTransmit(self.audio)
                if self.record:
                    if self.recorder is None:
                        self.recorder = pj.AudioMediaRecorder()
                        self.recorder.createRecorder(self.record)
                    self.audio.startTransmit(self.recorder)
                if first:
                    emit(event="media", id=self.cid, codec=self.getStreamInfo(i).codecName)
                return

    def stop_media(self) -> None:
        # Destroying the recorder finalises the WAV header.
        self.player = None
        self.recorder = None
        self.audio = None


class Bank:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.phones: dict[str, Phone] = {}
        self.accounts: dict[str, pj.Account] = {}
        self.trash: list[Phone] = []
        self.tones: dict[tuple[int, float], str] = {}
        self.cmds: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.tmp = tempfile.mkdtemp(prefix="phonebank-")
        self.listen: dict[str, Any] = {"mode": "busy"}

    def start(self) -> None:
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 1000
        cfg.logConfig.level = 1
        cfg.logConfig.consoleLevel = 1
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.noVad = True
        self.ep.libInit(cfg)
        self.ep.audDevManager().setNullDev()
        tc = pj.TransportConfig()
        tc.port = 0
        tc.boundAddress = self.args.bind
        tid = self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tc)
        self.port = int(self.ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])
        self.ep.libStart()
        lc = pj.AccountConfig()
        lc.idUri = f"sip:phonebank@{self.args.bind}:{self.port}"
        lc.mediaConfig.transportConfig.port = self.args.rtp_port_start
        lc.mediaConfig.transportConfig.boundAddress = self.args.bind
        lc.mediaConfig.srtpUse = {"off": pj.PJMEDIA_SRTP_DISABLED,
                                  "optional": pj.PJMEDIA_SRTP_OPTIONAL,
                                  "mandatory": pj.PJMEDIA_SRTP_MANDATORY}[self.args.srtp]
        lc.mediaConfig.srtpSecureSignaling = 0
        self.listener = Listener(self)
        self.listener.create(lc, True)
        if self.args.codec:  # offer only this codec
            for info in self.ep.codecEnum2():
                wanted = info.codecId.split("/")[0].lower() == self.args.codec.lower()
                self.ep.codecSetPriority(info.codecId, 255 if wanted else 0)

    def tone_file(self, hz: int, dbfs: float = -12.0) -> str:
        if not -60.0 <= dbfs <= 0.0:
            raise ValueError(f"tone_dbfs {dbfs} is outside -60..0")
        key = (hz, dbfs)
        if key not in self.tones:
            path = os.path.join(self.tmp, f"tone-{hz}-{dbfs:g}.wav")
            # A short gap at the end of each loop would show up as a level dip; keep it seamless.
            write_wav(path, sine(hz, 2.0, level_dbfs=dbfs) if hz else silence(2.0))
            self.tones[key] = path
        return self.tones[key]

    def gone(self, phone: Phone) -> None:
        self.phones.pop(phone.cid, None)
        self.trash.append(phone)

    def handle(self, c: dict[str, Any]) -> bool:
        op = c["op"]
        if op == "quit":
            return False
        if op == "call":
            tone = (self.tone_file(int(c["tone_hz"]), float(c.get("tone_dbfs", -12.0)))
                    if c.get("tone_hz") is not None else None)
            acc = self.accounts["@" + c["account"]] if c.get("account") else self.listener
            phone = Phone(self, acc, c["id"], tone, c.get("record"))
            self.phones[c["id"]] = phone
            uri = c["uri"]
            if c.get("transport") == "tcp":
                uri += ";transport=tcp"
            prm = pj.CallOpParam(True)
            if not c.get("account"):
                # From per call, not one account per caller ID: pjsua has only 8 accounts.
                prm.txOption.localUri = f"sip:{c.get('from', 'phonebank')}@127.0.0.1:{self.port}"
            for name, value in c.get("headers") or ():
                header = pj.SipHeader()
                header.hName, header.hValue = name, value
                prm.txOption.headers.append(header)
            phone.makeCall(uri, prm)
        elif op == "register":
            # A digest-authenticated account at a registrar (the SIP edge): it can then be
            # called, and calls placed with "account": user authenticate as it.
            ac = pj.AccountConfig()
            ac.idUri = f"sip:{c['user']}@{c['domain']}"
            ac.regConfig.registrarUri = c["registrar"]
            ac.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", c["user"], 0, c["password"]))
            ac.mediaConfig.transportConfig.port = self.args.rtp_port_start
            ac.mediaConfig.transportConfig.boundAddress = self.args.bind
            acc = Listener(self, c["user"])
            acc.create(ac, False)
            self.accounts["@" + c["user"]] = acc
        elif op == "hold":
            self.phones[c["id"]].setHold(pj.CallOpParam(True))
        elif op == "unhold":
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_UNHOLD
            self.phones[c["id"]].reinvite(prm)
        elif op == "listen":
            self.listen = c
        elif op == "hangup":
            live = self.phones.get(c["id"])
            if live is not None:
                live.hangup(pj.CallOpParam(True))
        elif op == "dtmf":
            phone = self.phones[c["id"]]
            prm = pj.CallSendDtmfParam()
            prm.digits = c["digits"]
            prm.method = (pj.PJSUA_DTMF_METHOD_SIP_INFO if c.get("method") == "info"
                          else pj.PJSUA_DTMF_METHOD_RFC2833)
            phone.sendDtmf(prm)
        return True

    def run(self) -> None:
        self.start()
        threading.Thread(target=self.read_stdin, daemon=True).start()
        emit(event="ready", port=self.port)
        running = True
        while running:
            self.ep.libHandleEvents(5)
            self.trash.clear()
            while running:
                try:
                    c = self.cmds.get_nowait()
                except queue.Empty:
                    break
                try:
                    running = self.handle(c)
                except Exception as exc:
                    emit(event="error", id=c.get("id"), error=f"{type(exc).__name__}: {exc}")
        self.hangup_all()
        for _ in range(20):
            self.ep.libHandleEvents(10)
        self.phones.clear()
        self.trash.clear()
        self.accounts.clear()
        del self.listener
        import gc

        gc.collect()
        self.ep.libDestroy()

    def hangup_all(self) -> None:
        # A helper, so no loop variable outlives it: a pj.Call deleted after libDestroy aborts.
        for phone in list(self.phones.values()):
            phone.stop_media()
            with contextlib.suppress(Exception):
                phone.hangup(pj.CallOpParam(True))

    def read_stdin(self) -> None:
        for line in sys.stdin:
            if line.strip():
                self.cmds.put(json.loads(line))
        self.cmds.put({"op": "quit"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rtp-port-start", type=int, default=30000)
    p.add_argument("--codec", help="offer only this codec (PCMU, PCMA, G722, opus)")
    p.add_argument("--srtp", choices=["off", "optional", "mandatory"], default="off",
                   help="SRTP (SDES) for every call of this bank")
    p.add_argument("--bind", default="127.0.0.1",
                   help="the phones' SIP and RTP address (a container network's host side)")
    Bank(p.parse_args()).run()


if __name__ == "__main__":
    main()
