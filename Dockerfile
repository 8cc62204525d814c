# MiniVoice: the SIP edge (Kamailio), the gateway (pjsua2 built from source, as on a developer
# machine) and the demo application, in one image. docker-compose.yml runs it.
# scripts/setup.sh is the single recipe: the same Debian packages, the same virtualenv and the
# same pjsua2 build (sip/build/build_pjsua2.sh) as `make run` and `make test` use.
FROM debian:bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    MINIVOICE_CACHE=/opt/minivoice-cache
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev make ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# setup.sh needs only these to install packages, the venv and pjsua2: a code change does not
# rebuild pjproject.
COPY pyproject.toml Makefile ./
COPY scripts/ scripts/
COPY sip/build/ sip/build/
RUN mkdir -p gateway sip media && touch gateway/__init__.py sip/__init__.py media/__init__.py \
 && scripts/setup.sh

COPY gateway/ gateway/
COPY sip/ sip/
COPY media/ media/
COPY edge/ edge/
COPY bench/ bench/
COPY configs/ configs/
RUN .venv/bin/python -m pip install -q --no-deps -e . \
 && .venv/bin/python -m gateway check-config configs/compose.yaml

# SIP edge: UDP+TCP 5060, TLS 5061; RTP; REST API and demo application
EXPOSE 5060/udp 5060/tcp 5061/tcp 10000-10999/udp 8080/tcp
VOLUME ["/app/var"]
STOPSIGNAL SIGTERM
CMD [".venv/bin/python", "-m", "gateway", "serve", "--config", "configs/compose.yaml"]
