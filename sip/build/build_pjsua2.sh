#!/usr/bin/env bash
# Build pjsua2 (pjproject's Python binding) with MiniVoice's config_site.h and
# install it into a virtualenv.
#
#   sip/build/build_pjsua2.sh <venv-python>
#
# Why not the PyPI wheels: they are built with PJSUA_MAX_CALLS=4 (README,
# "How pjsua2 is built"). Source comes from Debian's `asterisk` source
# package, which carries upstream pjproject as a component tarball; apt checks
# its signature and checksums, and no host name is written here.
#
# The result is cached under $MINIVOICE_CACHE (default ~/.cache/minivoice),
# keyed by the pjproject tarball, config_site.h, the patches, the recipe number below
# and the Python version, so a second run only copies two files.
#
#   MINIVOICE_FLOOR=1 sip/build/build_pjsua2.sh <python>
#
# builds only pjproject's own `pjsua` app from the same source and config_site.h but WITHOUT
# this project's patches, into its own cache entry, and installs nothing: the unpatched floor
# the benchmark compares the gateway with (`python -m bench --floor-build <printed dir>`).
set -euo pipefail

PY=${1:?usage: build_pjsua2.sh <python>}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${MINIVOICE_CACHE:-$HOME/.cache/minivoice}
SRC_CACHE=$CACHE/src
JOBS=${JOBS:-$(nproc)}
log() { printf '[pjsua2-build] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- source ----
find_tarball() { ls -1t "$SRC_CACHE"/*orig-Xpjproject.tar.* 2>/dev/null | head -n1 || true; }

fetch_source() {
    mkdir -p "$SRC_CACHE"
    local tarball
    tarball=$(find_tarball)
    if [ -n "$tarball" ]; then echo "$tarball"; return; fi
    "$HERE/../../scripts/apt-sid-src.sh" >&2
    log "downloading Debian's asterisk source package (for its pjproject component)"
    (cd "$SRC_CACHE" && apt-get source --download-only asterisk >&2)
    tarball=$(find_tarball)
    [ -n "$tarball" ] || { log "no *orig-Xpjproject* tarball in the asterisk source package"; exit 1; }
    # Keep only the component we need.
    find "$SRC_CACHE" -maxdepth 1 -type f ! -name "$(basename "$tarball")" -delete
    echo "$tarball"
}

# Bump when the configure flags or build steps below change (not for install-step edits).
# Recipe 2: a release build (-DNDEBUG). pjlib's pj_assert() is assert(): in a debug build one
# malformed SDP (c= with a 500-character address) aborts the whole process; with NDEBUG,
# PJ_ASSERT_RETURN returns an error code instead, and PJ_ENABLE_EXTRA_CHECK keeps those checks.
RECIPE=2
TARBALL=$(fetch_source)
PYTAG=$("$PY" -c 'import sys, sysconfig; print(sys.implementation.cache_tag + "-" + sysconfig.get_platform())')
FLOOR=${MINIVOICE_FLOOR:-}
if [ -n "$FLOOR" ]; then PATCHES=(); else PATCHES=("$HERE"/patches/*.patch); fi
KEY=$( { sha256sum "$TARBALL" | cut -d' ' -f1; cat "$HERE/config_site.h" "${PATCHES[@]}"; echo "recipe=$RECIPE $PYTAG${FLOOR:+ floor}"; } | sha256sum | cut -c1-16)
OUT=$CACHE/pjsua2/$KEY

install_into_venv() {
    local site f
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    for f in "$OUT"/pjsua2.py "$OUT"/_pjsua2*.so "$OUT"/BUILDINFO; do
        local dst=$site/$(basename "$f")
        [ "$(basename "$f")" = BUILDINFO ] && dst=$site/pjsua2.BUILDINFO
        cmp -s "$f" "$dst" && continue
        # Copy then rename: a gateway running from the old module keeps its mapped file
        # (overwriting a loaded .so in place kills running processes with SIGBUS).
        cp -f "$f" "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst"
    done
    # pjproject's own C app of the same build, beside the venv's python: the benchmark's
    # floor (python -m bench.syscalls runs it under the same load as the gateway).
    if [ -f "$OUT/pjsua" ]; then
        local bin
        bin=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["scripts"])')
        if ! cmp -s "$OUT/pjsua" "$bin/pjsua"; then
            cp -f "$OUT/pjsua" "$bin/pjsua.tmp.$$" && mv -f "$bin/pjsua.tmp.$$" "$bin/pjsua"
        fi
    fi
    "$PY" -c 'import pjsua2' || { log "pjsua2 does not import"; exit 1; }
}

use_cached() {
    log "cached build $KEY"
    if [ -n "$FLOOR" ]; then echo "$OUT"; exit 0; fi
    install_into_venv
    exit 0
}
[ -f "$OUT/BUILDINFO" ] && use_cached

# One build per key at a time: a second run of the same key (`make lint` in the same tree
# while a build is under way) wiped the first one's work tree under it. It now waits for the
# first to finish and takes its result.
mkdir -p "$CACHE/work"
exec 9>"$CACHE/work/$KEY.lock"
flock 9
[ -f "$OUT/BUILDINFO" ] && use_cached

# ----------------------------------------------------------------- build ----
WORK=$CACHE/work/$KEY
rm -rf "$WORK"; mkdir -p "$WORK"
tar -C "$WORK" -xf "$TARBALL"
PJ=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d | head -n1)
ver=$(awk -F':= *' '/^export PJ_VERSION_MAJOR/{ma=$2} /^export PJ_VERSION_MINOR/{mi=$2} END{print ma"."mi}' "$PJ/version.mak")
log "pjproject $ver from $(basename "$TARBALL")"
case "$ver" in 2.1[6-9]|2.[2-9][0-9]|[3-9].*) ;; *) log "pjproject >= 2.16 required, got $ver"; exit 1;; esac

cp "$HERE/config_site.h" "$PJ/pjlib/include/pj/config_site.h"
# Our patches to pjproject, each with its reason at the top (sip/build/patches/).
for p in "${PATCHES[@]}"; do
    log "patch $(basename "$p")"
    patch -d "$PJ" -p1 --forward --quiet <"$p" || { log "patch $(basename "$p") does not apply"; exit 1; }
done
# Debian removed this non-free driver from the tarball; drop it from the build as Debian does.
sed -i 's/ bdimad_dev\.o//' "$PJ/pjmedia/build/Makefile"

(
    cd "$PJ"
    log "configure"
    ./configure --disable-shared --disable-sound --disable-video --enable-epoll \
        --enable-libsamplerate --disable-libwebrtc --disable-libyuv --disable-v4l2 \
        --disable-sdl --disable-ffmpeg --disable-openh264 --disable-ilbc-codec \
        --disable-g7221-codec --with-external-gsm --with-external-speex \
        --with-external-srtp --disable-bcg729 --disable-silk --disable-opencore-amr \
        CFLAGS="-O2 -fPIC -DNDEBUG" CXXFLAGS="-O2 -fPIC -DNDEBUG" >configure.log 2>&1 \
        || { tail -n 30 configure.log; exit 1; }
    log "make lib (C libraries)"
    { make dep && make -j"$JOBS" lib; } >make.log 2>&1 || { tail -n 40 make.log; exit 1; }
    # The reference C app, used by the benchmark as the floor to compare with.
    make -C pjsip-apps/build pjsua >>make.log 2>&1 || { tail -n 40 make.log; exit 1; }
    [ -n "$FLOOR" ] && exit 0
    log "SWIG python wrapper (a few minutes, single-threaded)"
    make -C pjsip-apps/src/swig/python PYTHON_EXE="$PY" >swig.log 2>&1 || { tail -n 40 swig.log; exit 1; }
)

STAGE=$OUT.tmp
rm -rf "$STAGE"; mkdir -p "$STAGE"
if [ -z "$FLOOR" ]; then
    cp "$PJ"/pjsip-apps/src/swig/python/pjsua2.py "$STAGE"/
    find "$PJ"/pjsip-apps/src/swig/python/build -name '_pjsua2*.so' -exec cp {} "$STAGE"/ \;
fi
cp "$PJ"/pjsip-apps/bin/pjsua-* "$STAGE"/pjsua
printf 'pjproject=%s\nsource=%s\nkey=%s\npython=%s\n' "$ver" "$(basename "$TARBALL")" "$KEY" "$PYTAG" >"$STAGE"/BUILDINFO
rm -rf "$OUT"; mv "$STAGE" "$OUT"
rm -rf "$WORK"
log "built $KEY"
if [ -n "$FLOOR" ]; then echo "$OUT"; exit 0; fi
install_into_venv
