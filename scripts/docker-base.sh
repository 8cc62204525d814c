#!/usr/bin/env bash
# The base image of the MiniVoice images (Dockerfile's BASE_IMAGE), built from Debian packages
# when no image registry can be reached: debootstrap (minbase) of bookworm, from the mirror this
# machine's apt already uses, imported as one layer. Idempotent: an existing image is kept.
#
#   scripts/docker-base.sh [IMAGE]      # default minivoice-base:bookworm
#
# With a registry, skip this and build with BASE_IMAGE=debian:bookworm instead; the two are the
# same distribution (the Dockerfile only assumes bookworm with apt).
set -euo pipefail
IMAGE=${1:-${MINIVOICE_BASE_IMAGE:-minivoice-base:bookworm}}
SUITE=bookworm
log() { printf '[docker-base] %s\n' "$*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# The mirror apt is configured with (deb822 or one-line format); never a fixed host.
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(grep -E '^deb +' /etc/apt/sources.list | grep -v security | head -n1 \
        | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}')
fi
[ -n "$mirror" ] || { log "no Debian mirror found in the apt sources"; exit 1; }

root=$(mktemp -d /tmp/minivoice-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "debootstrap $SUITE (minbase) from $mirror"
t0=$(date +%s)
debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log"; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Same suites as the host (updates and security too), not only the one debootstrap wrote.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
    rm -f "$root/etc/apt/sources.list"
fi
# Mirrors that serve a frozen snapshot have Release files past their Valid-Until date; when
# this machine's apt is told to accept them, the image's apt is told the same.
aptconf=$(apt-config dump)   # not piped into grep -q: with pipefail, SIGPIPE would fail it
for opt in Acquire::Check-Valid-Until Acquire::Check-Date; do
    if grep -qiE "^$opt \"(false|0|no)\";" <<<"$aptconf"; then
        printf '%s "false";\n' "$opt" >>"$root/etc/apt/apt.conf.d/90minivoice-host-dates"
    fi
done
# An image has no use for downloaded .debs or the package lists of the build.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
log "imported $IMAGE in $(( $(date +%s) - t0 )) s"
