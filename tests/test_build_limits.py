"""The capacity the pjsua2 build is made for (sip/build/config_site.h) and the limits the
gateway's configuration accepts agree, and the installed build really holds that many calls."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, from_dict
from sip.config import MAX_CALLS_BUILT, SipConfig
from sip.pjconfig import PjLogWriter, endpoint_config

ROOT = Path(__file__).resolve().parent.parent
APP = {"id": "a", "customer_id": "c", "answer_url": "http://x/a", "secret": "s" * 16}


def _defines() -> dict[str, int]:
    text = (ROOT / "sip" / "build" / "config_site.h").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define\s+(\w+)\s+(\d+)\s*$", text, re.M)}


def test_max_calls_matches_the_build() -> None:
    built = _defines()
    assert built["PJSUA_MAX_CALLS"] == MAX_CALLS_BUILT
    # The media ports the gateway asks for at the most calls fit the bridge's port array.
    media_ports = endpoint_config(SipConfig(max_calls=MAX_CALLS_BUILT), PjLogWriter()).medConfig
    assert media_ports.maxMediaPorts <= built["PJSUA_MAX_CONF_PORTS"]


def test_max_calls_past_the_build_is_refused() -> None:
    ok = from_dict({"sip": {"max_calls": MAX_CALLS_BUILT}, "applications": [APP]})
    assert ok.sip.max_calls == MAX_CALLS_BUILT
    for bad, why in ((MAX_CALLS_BUILT + 1, f"must be <= {MAX_CALLS_BUILT}"),
                     (0, "must be >= 1"), (10**9, "must be <=")):
        with pytest.raises(ConfigError, match=f"sip.max_calls: {why}"):
            from_dict({"sip": {"max_calls": bad}, "applications": [APP]})


def test_installed_build_is_made_for_these_limits() -> None:
    # pjsua's defaults are the compiled-in limits; pjsua clamps a larger maxCalls silently.
    import pjsua2 as pj

    built = _defines()
    defaults = pj.EpConfig()
    assert defaults.uaConfig.maxCalls == built["PJSUA_MAX_CALLS"]
    assert defaults.medConfig.maxMediaPorts == built["PJSUA_MAX_CONF_PORTS"]


def test_level_monitor_takes_a_zero_tx_level() -> None:
    # What sip/thread.py does to the large rooms' level monitor (the null device's playback
    # port), in a process of its own: pjlib is a process-wide singleton.
    script = """
import pjsua2 as pj
from sip.config import SipConfig
from sip.pjconfig import PjLogWriter, endpoint_config
writer = PjLogWriter()
ep = pj.Endpoint()
ep.libCreate()
ep.libInit(endpoint_config(SipConfig(log_level=0), writer))
ep.audDevManager().setNullDev()
monitor = ep.audDevManager().getPlaybackDevMedia()
monitor.adjustTxLevel(0.0)
print("txLevelAdj", monitor.getPortInfo().txLevelAdj)
ep.libDestroy()
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "txLevelAdj 0.0" in out.stdout.splitlines(), out.stdout[-2000:]
