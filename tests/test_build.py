"""The pjsua2 build: from pjproject >= 2.16, with the call cap lifted, cached."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tests.harness import ROOT


def test_second_build_is_a_cache_hit() -> None:
    started = time.monotonic()
    run = subprocess.run([str(ROOT / "sip" / "build" / "build_pjsua2.sh"), sys.executable],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cached build" in run.stderr, run.stderr[-2000:]
    assert time.monotonic() - started < 60


def test_installed_pjsua2_is_ours() -> None:
    code = (
        "import pjsua2 as pj, sysconfig, pathlib;"
        "ep = pj.Endpoint(); ep.libCreate(); print('VERSION=' + ep.libVersion().full);"
        "info = pathlib.Path(sysconfig.get_paths()['platlib'], 'pjsua2.BUILDINFO');"
        "print(info.read_text())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    # pjlib prints its own start-up lines on stdout before any log config applies
    version = next(ln for ln in run.stdout.splitlines() if ln.startswith("VERSION="))[8:]
    info = run.stdout
    major, minor = (int(x) for x in version.strip().split(".")[:2])
    assert (major, minor) >= (2, 16), version
    assert "pjproject=2." in info and "orig-Xpjproject" in info
    # the cap pjsua's default build has (PJSUA_MAX_CALLS = 4) is lifted by config_site.h
    config_site = (ROOT / "sip" / "build" / "config_site.h").read_text()
    cap = re.search(r"#define PJSUA_MAX_CALLS\s+(\d+)", config_site)
    assert cap is not None and int(cap.group(1)) >= 2000, cap


def test_pjsua2_is_a_release_build() -> None:
    """No assert() left in the binding: with NDEBUG, pjlib's PJ_ASSERT_RETURN logs "Assert
    failed" and returns an error instead of aborting the process (a 500-character c= address
    in an SDP offer used to abort the gateway through one)."""
    [so] = list(Path(sysconfig.get_paths()["platlib"]).glob("_pjsua2*.so"))
    run = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "__assert_fail" not in run.stdout
    assert "Assert failed" in so.read_bytes().decode("latin-1")  # the release-mode log line
