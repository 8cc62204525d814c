#!/usr/bin/env bash
# Build the MiniVoice images (docker-compose.yml's edge, gateway, app and sipp services).
#
#   scripts/docker-build.sh [SERVICE...]        # default: all of them
#   scripts/docker-build.sh --cluster [SERVICE...]   # docker-compose.cluster.yml's (+ redis)
#
#   MINIVOICE_BASE_IMAGE   base image (default minivoice-base:bookworm, made by
#                          scripts/docker-base.sh unless it exists; debian:bookworm works too)
#   MINIVOICE_EXTRA_CA     a PEM file, or a directory of *.crt, trusted inside the build and the
#                          images (pip and apt behind a TLS-inspecting proxy). Unset: the CAs
#                          this host added locally (/usr/local/share/ca-certificates, where
#                          Debian keeps such a proxy's CA), if any. "none": no extra CA.
#
# pjsua2 is built in its own stage, which depends only on sip/build/ and the apt source helper,
# so after the first build a code change rebuilds in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[docker-build] %s\n' "$*" >&2; }
export MINIVOICE_BASE_IMAGE=${MINIVOICE_BASE_IMAGE:-minivoice-base:bookworm}

docker image inspect "$MINIVOICE_BASE_IMAGE" >/dev/null 2>&1 || scripts/docker-base.sh "$MINIVOICE_BASE_IMAGE"

# The CA files are part of the build context (docker/extra-ca/); stale ones from an earlier
# build with another bundle are removed, so the images trust exactly what was asked for.
stage=docker/extra-ca
find "$stage" -maxdepth 1 -name '*.crt' -delete
if [ -z "${MINIVOICE_EXTRA_CA+set}" ]; then
    # The host reaches the package registries only if it trusts its proxy: so will the build.
    site=/usr/local/share/ca-certificates
    compgen -G "$site/*.crt" >/dev/null && MINIVOICE_EXTRA_CA=$site
fi
if [ "${MINIVOICE_EXTRA_CA:-none}" != none ]; then
    if [ -d "$MINIVOICE_EXTRA_CA" ]; then
        n=0
        for f in "$MINIVOICE_EXTRA_CA"/*.crt "$MINIVOICE_EXTRA_CA"/*.pem; do
            [ -f "$f" ] || continue
            cp "$f" "$stage/extra-$(basename "${f%.*}").crt"; n=$((n + 1))
        done
        log "extra CA: $n file(s) from $MINIVOICE_EXTRA_CA"
    elif [ -f "$MINIVOICE_EXTRA_CA" ]; then
        cp "$MINIVOICE_EXTRA_CA" "$stage/extra.crt"
        log "extra CA: $MINIVOICE_EXTRA_CA"
    else
        log "MINIVOICE_EXTRA_CA=$MINIVOICE_EXTRA_CA is neither a file nor a directory"; exit 1
    fi
fi

t0=$(date +%s)
if [ "${1:-}" = --cluster ]; then
    shift
    docker-compose -f docker-compose.cluster.yml build "$@"
else
    # The profile makes the load service (sipp) part of the build too.
    docker-compose --profile load build "$@"
fi
log "built in $(( $(date +%s) - t0 )) s"
