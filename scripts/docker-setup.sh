#!/usr/bin/env bash
# What `make compose-test` needs besides scripts/setup.sh: Docker (engine and client),
# docker-compose 1.29 and debootstrap (for the base image), from Debian's packages.
# Idempotent: returns at once when they are installed. Starting the daemon is left to the
# test (tests/test_compose_stack.py starts dockerd if none runs).
set -euo pipefail
log() { printf '[docker-setup] %s\n' "$*" >&2; }
PACKAGES=(docker.io docker-compose debootstrap)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { log "need root to install: ${missing[*]}"; exit 1; }
log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
