"""Send mutated SIP to a live target over UDP and TCP and watch that it stays up.

Out-of-dialog cases (INVITE, CANCEL, OPTIONS) go to `target`; in-dialog cases (re-INVITE,
INFO with DTMF, BYE) ride on real calls the runner sets up first with a valid INVITE to
`dialog_target` (the gateway itself: the edge's record-routing is out of scope here). Every
2xx to an INVITE is ACKed and, for a mutated INVITE, followed by a BYE, as a well-behaved
peer would, so calls do not pile up. Every `check_every` cases `/healthz` is asked; a target
that stops answering is a finding, reported with the case numbers just sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.fuzz import messages as msgs
from tests.fuzz.mutate import mutate

UDP_MAX = 65000


@dataclass
class Report:
    sent: int = 0
    sent_tcp: int = 0
    responses: dict[int, int] = field(default_factory=dict)  # status code -> count
    dialogs: int = 0
    findings: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        codes = " ".join(f"{c}:{n}" for c, n in sorted(self.responses.items()))
        kinds = " ".join(f"{k}:{n}" for k, n in sorted(self.kinds.items()))
        return (f"cases={self.sent} tcp={self.sent_tcp} dialogs={self.dialogs} "
                f"seconds={self.seconds:.1f} findings={len(self.findings)}\n"
                f"  kinds: {kinds}\n  responses: {codes}")


_STATUS = re.compile(rb"^SIP/2\.0 (\d{3})")


def _header(raw: bytes, name: bytes) -> bytes:
    m = re.search(rb"^(?:" + name + rb")[ \t]*:[ \t]*([^\r\n]*)", raw,
                  re.IGNORECASE | re.MULTILINE)
    return m.group(1).strip() if m else b""


@dataclass
class _Call:
    dialog: msgs.Dialog
    answered: asyncio.Future[bytes]
    mutated: bool


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_packet(data, addr)


def ok_response(request: bytes) -> bytes:
    """200 OK to a request the target sends us (its BYE when a call ends), so it does not
    retransmit for 32 s."""
    lines = [b"SIP/2.0 200 OK"]
    for name in (b"Via|v", b"From|f", b"To|t", b"Call-ID|i", b"CSeq"):
        for m in re.finditer(rb"^(?:" + name + rb")[ \t]*:[^\r\n]*", request,
                             re.IGNORECASE | re.MULTILINE):
            lines.append(m.group(0))
    return b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n"


class Fuzzer:
    def __init__(self, target: tuple[str, int], dialog_target: tuple[str, int] | None,
                 seed: int, health: Callable[[], Awaitable[bool]],
                 source_host: str = "127.0.0.1") -> None:
        self.target = target
        self.dialog_target = dialog_target
        self.seed = seed
        self.health = health
        self.source_host = source_host
        self.report = Report()
        self.calls: dict[bytes, _Call] = {}  # Call-ID -> what we sent
        self.dialogs: list[msgs.Dialog] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.local_port = 0

    # -- responses -------------------------------------------------------------------
    def _on_packet(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        m = _STATUS.match(data)
        if not m:
            if addr is not None and data.startswith((b"BYE ", b"OPTIONS ", b"INFO ")):
                self._send_udp(ok_response(data), addr)
            return
        code = int(m.group(1))
        self.report.responses[code] = self.report.responses.get(code, 0) + 1
        call = self.calls.get(_header(data, b"Call-ID|i"))
        cseq = _header(data, b"CSeq")
        if call is None or not cseq.endswith(b"INVITE"):
            return
        if 200 <= code < 300:
            to_tag = re.search(rb";\s*tag=([^;>\s]+)", _header(data, b"To|t"))
            d = call.dialog
            if to_tag:
                d = msgs.Dialog(**{**d.__dict__, "to_tag": to_tag.group(1).decode(
                    "ascii", "replace")})
            number = int(cseq.split()[0]) if cseq.split()[0].isdigit() else 1
            self._send_udp(msgs.ack(d, f"ack{number}{id(call)}", cseq=number).encode(),
                           self._dest(call))
            if call.mutated:
                self._send_udp(msgs.bye(msgs.Dialog(**{**d.__dict__, "cseq": number + 1}),
                                        f"bye{id(call)}").encode(), self._dest(call))
            if not call.answered.done():
                call.answered.set_result(d.to_tag.encode())
        elif code >= 300 and not call.answered.done():
            call.answered.set_exception(RuntimeError(f"INVITE answered {code}"))

    def _dest(self, call: _Call) -> tuple[str, int]:
        return (call.dialog.host, call.dialog.port)

    def _send_udp(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data[:UDP_MAX], dest)

    # -- dialogs for in-dialog cases --------------------------------------------------
    async def _new_dialog(self, n: int) -> msgs.Dialog | None:
        if self.dialog_target is None:
            return None
        host, port = self.dialog_target
        d = msgs.Dialog(host, port, self.local_port, call_id=f"fuzz-dlg-{self.seed}-{n}",
                        from_tag=f"dlg{n}", user="2002", rtp_port=41000 + 2 * (n % 500))
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.calls[d.call_id.encode()] = _Call(d, fut, mutated=False)
        self._send_udp(msgs.invite(d, f"dlg{n}").encode(), (host, port))
        try:
            to_tag = await asyncio.wait_for(fut, 5)
        except (TimeoutError, RuntimeError):
            return None
        self.report.dialogs += 1
        return msgs.Dialog(**{**d.__dict__, "to_tag": to_tag.decode(), "cseq": 2})

    # -- one case ----------------------------------------------------------------------
    def build(self, case: int) -> tuple[str, msgs.Message, msgs.Dialog]:
        rng = random.Random(f"{self.seed}:{case}")
        kind = rng.choices(list(msgs.TEMPLATES), [45, 10, 10, 5, 10, 20])[0]
        host, port = self.target
        transport = "TCP" if rng.randrange(4) == 0 else "UDP"
        d = msgs.Dialog(host, port, self.local_port, transport=transport,
                        call_id=f"fuzz-{self.seed}-{case}", from_tag=f"t{case}",
                        rtp_port=42000 + 2 * (case % 1000))
        return kind, msgs.TEMPLATES[kind](d, f"c{case}"), d

    async def _send_case(self, case: int) -> None:
        rng = random.Random(f"{self.seed}:{case}:m")
        kind, message, d = self.build(case)
        if kind in msgs.IN_DIALOG:
            if not self.dialogs:
                return
            slot = case % len(self.dialogs)
            dlg = self.dialogs[slot]
            dlg = msgs.Dialog(**{**dlg.__dict__, "cseq": dlg.cseq + 1})
            self.dialogs[slot] = dlg
            message = msgs.TEMPLATES[kind](dlg, f"c{case}")
            d = dlg
        data, _desc = mutate(message, rng)
        self.report.kinds[kind] = self.report.kinds.get(kind, 0) + 1
        if kind == "INVITE":
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
            self.calls[d.call_id.encode()] = _Call(d, fut, mutated=True)
        self.report.sent += 1
        if d.transport == "TCP" or len(data) > UDP_MAX:
            self.report.sent_tcp += 1
            await self._send_tcp(data, (d.host, d.port))
        else:
            self._send_udp(data, (d.host, d.port))

    async def _send_tcp(self, data: bytes, dest: tuple[str, int]) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*dest, local_addr=(self.source_host, 0)), 2)
        except (OSError, TimeoutError):
            return
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), 2)
            with contextlib.suppress(TimeoutError, OSError):
                answer = await asyncio.wait_for(reader.read(4096), 0.05)
                if answer:
                    self._on_packet(answer)  # answers on TCP are counted; no ACK/BYE here
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    # -- the campaign --------------------------------------------------------------------
    async def run(self, cases: range, *, dialogs: int = 4, check_every: int = 250,
                  pace_s: float = 0.002) -> Report:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self._on_packet), local_addr=(self.source_host, 0))
        self.transport = transport  # type: ignore[assignment]
        self.local_port = transport.get_extra_info("sockname")[1]
        try:
            for n in range(dialogs):
                d = await self._new_dialog(n)
                if d is not None:
                    self.dialogs.append(d)
            for case in cases:
                await self._send_case(case)
                if case % check_every == check_every - 1:
                    if not await self.health():
                        first = max(cases.start, case - check_every + 1)
                        self.report.findings.append(
                            f"target unhealthy after cases {first}..{case} "
                            f"(seed {self.seed}); replay them one by one")
                        break
                    # dialogs the fuzz ended (a BYE that got through) are replaced
                    if len(self.dialogs) < dialogs:
                        d = await self._new_dialog(1000 + case)
                        if d is not None:
                            self.dialogs.append(d)
                    self._forget_old_calls()
                if pace_s:
                    await asyncio.sleep(pace_s)
            await asyncio.sleep(1.0)  # answers in flight, ACK/BYE for late 200s
            if not self.report.findings and not await self.health():
                self.report.findings.append(f"target unhealthy at the end (seed {self.seed})")
            for d in self.dialogs:  # hang up the carrier calls
                d = msgs.Dialog(**{**d.__dict__, "cseq": d.cseq + 1})
                self._send_udp(msgs.bye(d, f"end{d.call_id}").encode(), (d.host, d.port))
            await asyncio.sleep(0.3)
        finally:
            transport.close()
            self.report.seconds = time.monotonic() - started
        return self.report

    def _forget_old_calls(self) -> None:
        if len(self.calls) > 5000:
            for key in list(self.calls)[:-1000]:
                call = self.calls.pop(key)
                if not call.answered.done():
                    call.answered.cancel()
