#!/usr/bin/env bash
# Add a deb-src entry for Debian sid, derived from the machine's own apt sources
# (same mirror, same signing key), so `apt-get source asterisk` can fetch the
# pjproject 2.16+ component. Binary packages still come from the stable suites.
set -euo pipefail
DST=/etc/apt/sources.list.d/minivoice-sid-src.sources
[ -f "$DST" ] && exit 0
SRC=/etc/apt/sources.list.d/debian.sources
if [ -f "$SRC" ]; then
    uris=$(awk '/^URIs:/{print; exit}' "$SRC")
    signed=$(awk '/^Signed-By:/{print; exit}' "$SRC")
elif [ -f /etc/apt/sources.list ]; then
    # one-line format: deb [signed-by=...] URI suite components
    line=$(grep -E '^deb +' /etc/apt/sources.list | grep -v security | head -n1)
    uris="URIs: $(echo "$line" | awk '{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}')"
    signed="Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
else
    echo "no Debian apt source found to derive a deb-src entry from" >&2; exit 1
fi
printf 'Types: deb-src\n%s\nSuites: sid\nComponents: main\n%s\n' "$uris" "$signed" >"$DST"
apt-get update -qq
