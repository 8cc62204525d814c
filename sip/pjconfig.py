"""Pure builders for pjsua2 configuration objects, and the pjsip -> logging bridge."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pjsua2 as pj

from sip import USER_AGENT
from sip.config import SipConfig

log = logging.getLogger("pjsip")

# pjsua2 codec IDs for the codec names used in configuration.
CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1",
             "opus": "opus/48000/2"}


class PjLogWriter(pj.LogWriter):  # type: ignore[misc]
    """Forwards pjsip's log lines to Python logging. Keep a reference for the endpoint's life."""

    LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}

    def write(self, entry: Any) -> None:
        with contextlib.suppress(Exception):  # never let a log line raise into C
            log.log(self.LEVELS.get(entry.level, logging.DEBUG), "%s", entry.msg.rstrip())


def endpoint_config(cfg: SipConfig, writer: PjLogWriter) -> Any:
    ep_cfg = pj.EpConfig()
    ua = ep_cfg.uaConfig
    ua.threadCnt = 0  # no pjsip worker threads: our SIP thread polls
    ua.mainThreadOnly = True  # callbacks from media/clock threads are queued to our thread
    ua.maxCalls = cfg.max_calls
    ua.userAgent = USER_AGENT
    lc = ep_cfg.logConfig
    lc.level = cfg.log_level
    lc.consoleLevel = 0
    lc.writer = writer
    lc.decor = 0
    med = ep_cfg.medConfig
    # Mix at the callers' rate: with G.711 a 16 kHz bridge resamples every stream
    # and costs ~1.8x (measured when the build was set up; README, "How pjsua2 is built").
    med.clockRate = cfg.clock_rate
    med.sndClockRate = cfg.clock_rate
    med.channelCount = 1
    med.ecTailLen = 0  # no echo canceller on a server
    med.noVad = True  # keep RTP flowing; no comfort-noise gaps for the mixer
    med.quality = 4
    med.confThreads = cfg.conf_threads
    med.maxMediaPorts = cfg.max_calls * 2 + 100
    # read back: nested SWIG structs must really have taken the values
    assert ep_cfg.uaConfig.maxCalls == cfg.max_calls
    assert ep_cfg.medConfig.clockRate == cfg.clock_rate
    return ep_cfg


def transport_config(cfg: SipConfig, port: int) -> Any:
    tc = pj.TransportConfig()
    tc.port = port
    tc.boundAddress = cfg.host
    if cfg.public_host:
        tc.publicAddress = cfg.public_host
    return tc


SRTP_USE = {"off": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
            "mandatory": pj.PJMEDIA_SRTP_MANDATORY}


def account_config(cfg: SipConfig, port: int, user: str = "minivoice") -> Any:
    ac = pj.AccountConfig()
    ac.idUri = f"sip:{user}@{cfg.public_host or cfg.host}:{port}"
    mt = ac.mediaConfig.transportConfig
    mt.port = cfg.rtp_port_start
    mt.portRange = cfg.rtp_port_range
    # A random port per stream (sip/build/patches/0001): a live call's port is not guessable.
    mt.randomizePort = cfg.rtp_port_range > 0
    ac.mediaConfig.srtpUse = SRTP_USE[cfg.srtp]
    # 0: SDES keys are accepted over any SIP transport. Behind the edge, TLS ends at Kamailio
    # and the gateway hears plain SIP on loopback; demanding sips: here would refuse them all.
    ac.mediaConfig.srtpSecureSignaling = 0
    mt.boundAddress = cfg.rtp_host or cfg.host
    if cfg.public_host:
        mt.publicAddress = cfg.public_host
    return ac
