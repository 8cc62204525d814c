#!/usr/bin/env bash
# Everything `make run` and `make test` need, installed and cached. Idempotent: a second
# run checks and returns in a few seconds.
#   1. Debian packages (build tools, codec libraries, SIPp, espeak-ng, sox)
#   2. the virtualenv .venv with the project and its dev tools
#   3. pjsua2 built from pjproject source (cached in ~/.cache/minivoice, see sip/build/)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[setup] %s\n' "$*" >&2; }

APT_PACKAGES=(
    build-essential pkg-config swig dpkg-dev xz-utils            # building pjproject
    libssl-dev libopus-dev libsrtp2-dev libspeex-dev libspeexdsp-dev
    libgsm1-dev libsamplerate0-dev uuid-dev
    sip-tester                                                   # SIPp: tests and benchmark
    espeak-ng sox libsox-fmt-mp3                                 # TTS, prompt conversion (MP3)
    kamailio kamailio-sqlite-modules kamailio-tls-modules        # the SIP edge (edge/)
    openssl sqlite3 iproute2                                     # edge TLS pair, users db, ss
    systemd                                                      # tests: systemd-analyze verify
    linphone-cli baresip-core                                    # tests: real softphones
    chromium chromium-driver                                     # tests: the web console
    redis-server                                                 # cluster: shared room state
    linux-perf                                                   # bench.syscalls: syscall counts
)
PY=${PYTHON:-python3}

missing=()
pkg_missing() { ! dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in "${APT_PACKAGES[@]}"; do pkg_missing "$p" && missing+=("$p"); done
# The interpreter needs venv/ensurepip and its C headers (Debian splits them out).
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then missing+=(python3-venv); fi
if ! "$PY" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    missing+=(python3-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { log "need root to install: ${missing[*]}"; exit 1; }
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian package may start its own kamailio (where services start): it would hold port
# 5060. The project runs Kamailio itself (gateway/edge/kamailio.py), so stop and disable that one.
if [ -f /run/kamailio/kamailio.pid ] && kill -0 "$(cat /run/kamailio/kamailio.pid)" 2>/dev/null; then
    log "stopping the system kamailio service (the project runs its own)"
    kill "$(cat /run/kamailio/kamailio.pid)" || true
    command -v update-rc.d >/dev/null && update-rc.d kamailio disable >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=.venv/.deps-$(sha256sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    log "installing Python dependencies"
    piplog=.venv/pip-install.log
    { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip setuptools wheel &&
      .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]'; } >"$piplog" 2>&1 \
        || { tail -n 40 "$piplog"; log "pip failed (full log: $piplog)"; exit 1; }
    rm -f .venv/.deps-*; touch "$stamp"
fi

sip/build/build_pjsua2.sh "$PWD/.venv/bin/python"
log "ready"
