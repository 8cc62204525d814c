# MiniVoice images, one target per compose service (docker-compose.yml):
#   edge     Kamailio with the config rendered by `python -m gateway edge`
#   gateway  the gateway (pjsua2 built from source in the `pjsua2` stage), non-root
#   app      the example answer_url application (examples/app/)
#   sipp     SIPp and sox, for the load profile
#   redis    Debian's redis-server, the shared state of a cluster (docker-compose.cluster.yml)
# Build with scripts/docker-build.sh (it makes the base image when no registry is reachable and
# stages the optional extra CA bundle), or `docker-compose build`.
ARG BASE_IMAGE=minivoice-base:bookworm

# ---------------------------------------------------------------- os ----------
# Debian bookworm plus Python, trusting the extra CA (if any) for pip and apt over TLS.
FROM ${BASE_IMAGE} AS os
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY docker/extra-ca/ /usr/local/share/ca-certificates/minivoice-extra/
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates netbase python3 python3-venv \
        >/dev/null \
 && update-ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- redis -------
# The cluster's shared state (docs/cluster.md): Debian's redis-server, built here like every
# other image (no registry). Nothing in it must survive a restart (the nodes re-publish), so
# no persistence; reachable only on the compose network (not published). Right after `os`:
# the classic builder builds every stage above the target, and redis needs none of them.
FROM os AS redis
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/*
USER redis
EXPOSE 6379/tcp
CMD ["redis-server", "--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", \
     "--save", "", "--appendonly", "no", "--dir", "/tmp"]

# ---------------------------------------------------------------- pjsua2 ------
# Depends only on sip/build/ and the apt source helper: code changes never rebuild pjproject.
FROM os AS pjsua2
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends build-essential pkg-config swig dpkg-dev \
        xz-utils python3-dev libssl-dev libopus-dev libsrtp2-dev libspeex-dev \
        libspeexdsp-dev libgsm1-dev libsamplerate0-dev uuid-dev >/dev/null
WORKDIR /build
COPY scripts/apt-sid-src.sh scripts/
COPY sip/build/ sip/build/
RUN python3 -m venv /opt/venv \
 && MINIVOICE_CACHE=/opt/pjcache sip/build/build_pjsua2.sh /opt/venv/bin/python \
 && mkdir /out && cp /opt/pjcache/pjsua2/*/pjsua2.py /opt/pjcache/pjsua2/*/_pjsua2*.so \
        /opt/pjcache/pjsua2/*/BUILDINFO /out/ \
 && rm -rf /opt/pjcache

# ---------------------------------------------------------------- runtime -----
# The run-time dependencies of pyproject.toml as a requirements file: copied on by content, so
# an edit elsewhere in pyproject.toml (tool settings) does not reinstall them.
FROM os AS requirements
COPY pyproject.toml /tmp/
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" >/requirements.txt

# The virtualenv with those, and the unprivileged user every service runs as (one uid, so the
# shared state volume is writable by all of them).
FROM os AS runtime
RUN groupadd --system --gid 10001 minivoice \
 && useradd --system --uid 10001 --gid minivoice --home-dir /app --shell /usr/sbin/nologin minivoice
WORKDIR /app
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN python3 -m venv .venv \
 && .venv/bin/python -m pip install -q -r /tmp/requirements.txt \
 && mkdir -p var && chown minivoice:minivoice var
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- app ---------
FROM runtime AS app
COPY gateway/ gateway/
COPY examples/app/ examples/app/
USER minivoice
EXPOSE 3000/tcp
CMD [".venv/bin/python", "examples/app/app.py"]

# ---------------------------------------------------------------- edge --------
FROM runtime AS edge
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends kamailio kamailio-sqlite-modules \
        kamailio-tls-modules openssl >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY gateway/ gateway/
# gateway.config takes the `sip:` section's schema from sip/config.py (pure Python)
COPY sip/__init__.py sip/config.py sip/
COPY edge/ edge/
COPY configs/ configs/
# The mount point of the cluster's shared `users` volume (docker-compose.cluster.yml): a fresh
# volume takes this directory's owner, so the unprivileged user can write users.db in it.
RUN mkdir -p var/users && chown minivoice:minivoice var/users
USER minivoice
EXPOSE 5060/udp 5060/tcp 5061/tcp
STOPSIGNAL SIGTERM
CMD [".venv/bin/python", "-m", "gateway", "edge", "--config", "configs/compose.yaml"]

# ---------------------------------------------------------------- sipp --------
FROM os AS sipp
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends sip-tester sox >/dev/null \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY edge/sipp/ edge/sipp/
CMD ["sipp", "-v"]

# ---------------------------------------------------------------- gateway -----
FROM runtime AS gateway
# pjsua2's shared libraries (the C libraries are linked in statically), TTS and prompt
# conversion (espeak-ng, sox), the pjsua2 module from the build stage.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libssl3 libopus0 libsrtp2-1 libspeex1 \
        libspeexdsp1 libgsm1 libsamplerate0 libuuid1 libstdc++6 espeak-ng sox libsox-fmt-mp3 \
        >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=pjsua2 /out/ /tmp/pjsua2/
RUN site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])') \
 && cp /tmp/pjsua2/pjsua2.py /tmp/pjsua2/_pjsua2*.so "$site"/ \
 && cp /tmp/pjsua2/BUILDINFO "$site"/pjsua2.BUILDINFO && rm -rf /tmp/pjsua2 \
 && .venv/bin/python -c 'import pjsua2'
COPY gateway/ gateway/
COPY sip/ sip/
COPY media/ media/
COPY edge/ edge/
COPY configs/ configs/
RUN .venv/bin/python -m gateway check-config configs/compose.yaml
RUN mkdir -p var/users && chown minivoice:minivoice var/users   # as in the edge stage
USER minivoice
# SIP is not published: only the edge talks to it, over the compose network. RTP and HTTP are.
EXPOSE 5070/udp 5070/tcp 10000-10099/udp 8080/tcp
STOPSIGNAL SIGTERM
CMD [".venv/bin/python", "-m", "gateway", "serve", "--config", "configs/compose.yaml"]
