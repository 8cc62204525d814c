"""Call quality: the E-model maths, the tally of pjmedia's counters, and real calls (SIPp
playing a G.711 pcap, clean and with every 10th RTP packet removed) whose loss and MOS
land in `call.completed` and in the stored call record."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bench import sipp
from media.quality import (
    CallQuality,
    QualityTally,
    StreamSample,
    effective_delay_ms,
    mos,
    mos_from_r,
    r_factor,
)
from tests import pcap
from tests.harness import AppServer, GatewayProc, Phonebank, rtp_block

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "uac_pcap.xml"


# -- the E-model ----------------------------------------------------------------------
@pytest.mark.parametrize("r,expected", [
    (93.2, 4.41),  # G.107's default R: the best a narrowband call rates
    (80.0, 4.02), (70.0, 3.60), (60.0, 3.10), (50.0, 2.58),
    (0.0, 1.0), (-5.0, 1.0), (100.0, 4.5), (120.0, 4.5),
])
def test_mos_from_r_known_points(r: float, expected: float) -> None:
    assert mos_from_r(r) == pytest.approx(expected, abs=0.01)


def test_r_factor_known_points() -> None:
    assert r_factor("PCMA", 0.0, 0.0) == pytest.approx(93.2)
    # G.113 App. I: G.711 with PLC, Bpl 25.1; 5 % random loss: Ie_eff = 95*5/30.1
    assert r_factor("PCMU", 5.0, 0.0) == pytest.approx(93.2 - 95 * 5 / 30.1)
    # Id: 0.024 d below 177.3 ms, plus 0.11 (d - 177.3) above
    assert r_factor("PCMA", 0.0, 100.0) == pytest.approx(93.2 - 2.4)
    assert r_factor("PCMA", 0.0, 300.0) == pytest.approx(93.2 - 7.2 - 0.11 * 122.7)
    # 100 % loss drives Ie_eff to 95 - Ie
    assert r_factor("PCMA", 100.0, 0.0) == pytest.approx(93.2 - 95 * 100 / 125.1)
    # nonsense inputs are clamped, not propagated
    assert r_factor("PCMA", -3.0, -50.0) == pytest.approx(93.2)
    assert r_factor("PCMA", 400.0, 0.0) == r_factor("PCMA", 100.0, 0.0)
    # a codec the table does not know is rated without concealment (Bpl 10): worse
    assert r_factor("XYZ", 5.0, 0.0) < r_factor("PCMA", 5.0, 0.0)


def test_mos_clean_and_lossy() -> None:
    assert mos("PCMA", 0.0, None, 0.0) == pytest.approx(4.40, abs=0.01)  # 10 ms framing
    assert mos("PCMA", 10.0, None, 0.0) < 4.0
    assert mos("PCMA", 10.0, None, 0.0) > mos("PCMA", 20.0, None, 0.0) > 1.0
    assert mos("PCMA", 0.0, 400.0, 30.0) < mos("PCMA", 0.0, 40.0, 3.0)
    assert effective_delay_ms(None, 5.0) == 20.0
    assert effective_delay_ms(100.0, 5.0) == 70.0


# -- the tally of a call's streams --------------------------------------------------------
def _sample(**kw: Any) -> StreamSample:
    base: dict[str, Any] = dict(codec="PCMA", rx_packets=0, rx_lost=0, jitter_ms=0.0,
                                jitter_samples=0, rtt_ms=0.0, rtt_samples=0, tx_packets=0,
                                tx_lost=0)
    return StreamSample(**{**base, **kw})


def test_tally_sums_streams_and_weights_jitter() -> None:
    t = QualityTally()
    assert t.freeze() is None  # never had media: no quality at all
    t.add(_sample(rx_packets=90, rx_lost=10, jitter_ms=2.0, jitter_samples=100,
                  tx_packets=100))
    t.add(_sample(codec="PCMU", rx_packets=300, rx_lost=0, jitter_ms=6.0, jitter_samples=300,
                  rtt_ms=40.0, rtt_samples=2, tx_packets=300, tx_lost=3))
    q = t.freeze()
    assert q == CallQuality(codec="PCMU", packets_received=390, packets_lost=10,
                            jitter_ms=5.0, rtt_ms=40.0, packets_sent=400, remote_lost=3)
    assert q.loss_pct == 2.5
    j = q.as_json()
    assert set(j) >= {"codec", "packets_received", "packets_lost", "loss_pct", "jitter_ms",
                      "rtt_ms", "mos"}
    assert j["mos"] == mos("PCMU", 2.5, 40.0, 5.0)


def test_tally_hostile_counters() -> None:
    """pjmedia's counters are unsigned 32-bit; a negative, absurd or empty one must not make
    a negative loss, a NaN or an endless number."""
    t = QualityTally()
    t.add(_sample(rx_packets=-5, rx_lost=-1, jitter_ms=-3.0, jitter_samples=5,
                  rtt_ms=-1.0, rtt_samples=3))
    q = t.freeze()
    assert q is not None
    assert (q.packets_received, q.packets_lost, q.jitter_ms, q.rtt_ms) == (0, 0, 0.0, None)
    assert q.loss_pct == 0.0 and q.mos is None  # nothing received: nothing to rate
    for _ in range(3):
        t.add(_sample(rx_packets=2**39, rx_lost=2**39))
    assert t.freeze().packets_received == QualityTally.MAX_COUNT  # type: ignore[union-attr]


# -- the pcap tool ----------------------------------------------------------------------
def test_pcap_writer_and_dropper(tmp_path: Path) -> None:
    clean, lossy = tmp_path / "clean.pcap", tmp_path / "lossy.pcap"
    assert pcap.write_alaw_tone(clean, 2.0) == 100
    assert pcap.drop_every(clean, lossy, 10) == (100, 10)
    seqs = [int.from_bytes(p[2:4], "big") for p in pcap.rtp_packets(lossy)]
    assert len(seqs) == 90 and 9 not in seqs and 19 not in seqs and seqs[:3] == [0, 1, 2]
    assert all(p[1] & 0x7F == 8 and len(p) == 12 + 160 for p in pcap.rtp_packets(lossy))
    with pytest.raises(ValueError):
        pcap.drop_every(clean, lossy, 1)


PCAP_HDR = b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + b"\0" * 8 + b"\xff\xff\x00\x00\x01\x00\x00\x00"


@pytest.mark.parametrize("data", [
    b"", b"\xd4\xc3\xb2\xa1" + b"\0" * 10, b"x" * 40, PCAP_HDR,
    PCAP_HDR + b"\0" * 8 + b"\xff\xff\xff\x7f" + b"\0" * 4,  # claims 2 GB of packet
    PCAP_HDR + b"\0" * 8 + b"\x10\0\0\0" + b"\0" * 4 + b"abc",  # claims more than is there
    PCAP_HDR + b"\0" * 7,  # a truncated record header
])
def test_pcap_reader_refuses_broken_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(data)
    if data == PCAP_HDR:  # a header and no records is a valid, empty capture
        assert list(pcap.rtp_packets(path)) == []
        return
    with pytest.raises(pcap.PcapError):
        pcap.read(path)


# -- real calls ---------------------------------------------------------------------------
async def _pcap_call(gw: GatewayProc, app: AppServer, tmp: Path, pcap_file: Path,
                     hold_ms: int) -> dict[str, Any]:
    scenario = tmp / f"uac-{pcap_file.stem}.xml"
    scenario.write_text(SCENARIO.read_text().replace("@PCAP@", str(pcap_file))
                        .replace("@HOLD_MS@", str(hold_ms)))
    before = len(app.webhooks())
    result = await sipp.run(tmp, f"127.0.0.1:{gw.sip_port}", scenario, service="1001",
                            calls=1, rate=1, hold_ms=0, media_port=rtp_block(), timeout_s=60)
    assert result.successful == 1, result.errors
    done = await app.wait_for(lambda: [w for w in app.webhooks()[before:]
                                       if w["event"] == "call.completed"], timeout=15)
    return done[0]  # type: ignore[no-any-return]


@pytest.mark.sip
async def test_pcap_loss_shows_in_the_call_record(
    app: AppServer, gateway: GatewayProc, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "quality"}}]}
    clean, lossy = tmp_path / "clean.pcap", tmp_path / "lossy.pcap"
    sent = pcap.write_alaw_tone(clean, 4.0)  # 200 packets of 20 ms
    assert pcap.drop_every(clean, lossy, 10) == (sent, sent // 10)

    good = await _pcap_call(gateway, app, tmp_path, clean, 5000)
    q = good["data"]["quality"]
    assert q["codec"] == "PCMA"
    assert q["packets_received"] >= sent * 0.95, q
    assert q["packets_lost"] <= 2 and q["loss_pct"] < 1.0, q
    assert q["mos"] > 4.0, q
    assert 0 <= q["jitter_ms"] < 20, q

    bad = await _pcap_call(gateway, app, tmp_path, lossy, 5000)
    q = bad["data"]["quality"]
    # every 10th packet is missing: 20 of 200, minus what the receiver's probation and the
    # stream's last packet hide (a gap after the last packet received is not seen)
    assert 17 <= q["packets_lost"] <= 21, q
    assert 8.0 <= q["loss_pct"] <= 11.0, q
    assert q["mos"] < good["data"]["quality"]["mos"] - 0.3, (q, good["data"]["quality"])

    # the same numbers in the stored record, through the API
    status, record = await gateway.get(f"/v1/calls/{bad['call']['id']}")
    assert status == 200, record
    assert record["quality"] == q


def test_the_record_carries_quality_only_once_there_is_some() -> None:
    from gateway.call.record import CallRecord

    rec = CallRecord(call_id="call_q", customer_id="c", application_id="a",
                     direction="inbound", from_user="1", to="2", sip={}, created_at=0.0)
    rec.ended(1.0, sip_code=487, by_gateway=False, cause="normal")
    assert rec.view()["quality"] is None and "quality" not in rec.completed_data()
    rec.quality = CallQuality("PCMU", 50, 0, 1.0, 20.0).as_json()
    assert rec.view()["quality"] == rec.completed_data()["quality"] == rec.quality
    assert rec.quality["mos"] == mos("PCMU", 0.0, 20.0, 1.0)


@pytest.mark.sip
async def test_quality_when_the_gateway_hangs_up(
    app: AppServer, gateway: GatewayProc, phones: Phonebank
) -> None:
    """The gateway's own hang-up (its action list ran out) takes the statistics too: pjsua
    destroys the stream inside hangup(), before it reports DISCONNECTED."""
    app.answer = lambda p: {"actions": [{"pause": {"length": 2}}]}
    phones.call("a", gateway.uri("1001"), tone_hz=440)
    await phones.wait("ended", "a", timeout=15)
    (done,) = await app.completed()
    assert done["data"]["hangup_by"] == "gateway"
    q = done["data"]["quality"]
    assert q["codec"] and q["packets_received"] > 40, q  # about 2 s of 20 ms packets
    assert q["packets_sent"] > 0 and q["loss_pct"] < 2 and q["mos"] > 4.0, q


@pytest.mark.sip
async def test_pcap_jitter_shows_in_the_call_record(
    app: AppServer, gateway: GatewayProc, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "jitter"}}]}
    jittery = tmp_path / "jittery.pcap"
    pcap.write_alaw_tone(jittery, 4.0, jitter_ms=15.0)
    q = (await _pcap_call(gateway, app, tmp_path, jittery, 5000))["data"]["quality"]
    # uniform 0-15 ms delays: RFC 3550's running estimate is about 5 ms; SIPp's own
    # scheduling and a loaded machine add to it
    assert 2.0 <= q["jitter_ms"] <= 15.0, q
    assert q["packets_lost"] <= 2, q


# pjmedia sends RTCP every PJMEDIA_RTCP_INTERVAL (5 s, a compile-time constant pjsua2 does not
# expose), randomised by +-0.5 s, the first one an interval after the stream's first frame.
# A round trip is measured when a receiver report comes back carrying the LSR/DLSR of one of
# our sender reports, so the gateway's first sample needs its own first SR (4.5-5.5 s) and then
# the phone's next report after it: by about 11 s in the worst case.
RTT_CALL_S = 14.0


@pytest.mark.sip
async def test_rtt_from_rtcp_in_the_call_record(
    app: AppServer, gateway: GatewayProc, phones: Phonebank
) -> None:
    """Two pjsua2 phones in a room long enough for RTCP both ways: each call's record has a
    round trip from pjmedia's RTCP (a loopback one: well under a few ms, but measured), and
    the MOS that includes it."""
    app.answer = lambda p: {"actions": [{"conference": {"room": "rtt"}}]}
    phones.call("a", gateway.uri("1001"), tone_hz=440)
    phones.call("b", gateway.uri("1001"), tone_hz=880)
    for cid in ("a", "b"):
        await phones.wait("media", cid, timeout=15)
    await asyncio.sleep(RTT_CALL_S)
    await phones.hangup_all(("a", "b"))
    done = await app.completed(count=2, timeout=15)
    rtts = []
    for hook in done:
        q = hook["data"]["quality"]
        print(f"call {hook['call']['id']}: rtt {q['rtt_ms']} ms, jitter {q['jitter_ms']} ms, "
              f"mos {q['mos']}")
        assert q["rtt_ms"] is not None, q
        # loopback: about 0.1 ms. pjmedia measures in units of 1/65536 s (15 us) and keeps
        # the mean in whole microseconds, so one call's mean could in principle be 0; the
        # pair of calls must show a round trip above 0.
        assert 0.0 <= q["rtt_ms"] < 100.0, q
        rtts.append(q["rtt_ms"])
        assert q["packets_received"] > 500 and q["mos"] > 4.0, q
        assert q["mos"] == pytest.approx(
            mos(q["codec"], q["loss_pct"], q["rtt_ms"], q["jitter_ms"]), abs=0.02), q
        status, record = await gateway.get(f"/v1/calls/{hook['call']['id']}")
        assert status == 200 and record["quality"] == q, record
    assert max(rtts) > 0.0, rtts
