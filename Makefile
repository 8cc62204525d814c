# The two commands a newcomer needs: `make run` and `make test`. Both set up what they need.
PY := .venv/bin/python

.PHONY: run test setup lint unit bench bench-quick fuzz fuzz-http clean compose-test cluster

setup:
	@scripts/setup.sh

# The whole stack (configs/demo.yaml): the SIP edge (Kamailio) on 5060 UDP/TCP and 5061 TLS,
# the gateway behind it on loopback, the demo application. Ctrl-C stops all of it.
run: setup
	$(PY) -m gateway serve --config configs/demo.yaml

# Two gateway nodes sharing rooms (configs/cluster.yaml, docs/cluster.md): redis-server, the
# edge as dispatcher on 5060, the nodes' HTTP on 127.0.0.1:8081 and 8082, the demo app.
# Ctrl-C stops all of it.
cluster: setup
	$(PY) -m gateway.cluster configs/cluster.yaml

# Everything, the container stack included (Docker is installed from Debian if missing, so a
# fresh machine runs it too; it is skipped, with the reason, only where dockerd cannot start).
test: setup lint
	@scripts/docker-setup.sh
	$(PY) -m pytest -q -p no:cacheprovider -rs

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy gateway sip media bench tests
	.venv/bin/lint-imports

unit: setup
	$(PY) -m pytest -q -m "not sip"

# The container stacks for real (tests/test_compose_stack.py): builds the images, brings up
# edge, gateway and app with docker-compose, registers a phone, makes a SIPp call into its
# room, checks audio and webhooks, tears it all down; the same for the cluster shape
# (tests/test_compose_cluster_stack.py: callers on both nodes of one room, a node killed).
# Installs Docker and docker-compose from Debian if missing; the tests start dockerd if none
# runs.
compose-test: setup
	@scripts/docker-setup.sh
	$(PY) -m pytest -q -p no:cacheprovider -rs tests/test_compose.py tests/test_compose_stack.py \
		tests/test_compose_cluster.py tests/test_compose_cluster_stack.py

bench: setup
	$(PY) -m bench

# The SIP fuzzer at length (100,000 cases at the gateway, then 20,000 through the edge);
# `make test` runs a slice of it. FUZZ_ARGS="--seed 7 --cases 5000" to replay or shorten.
fuzz: setup
	$(PY) -m tests.fuzz $(FUZZ_ARGS)
	$(PY) -m tests.fuzz --edge --cases 20000 $(FUZZ_ARGS)

# The HTTP fuzzer at length (100,000 pure-parser cases, 10,000 REST requests and 300 calls
# with fuzzed answer_url documents); `make test` runs a slice. FUZZ_HTTP_ARGS="--seed 7".
fuzz-http: setup
	$(PY) -m tests.fuzz_http $(FUZZ_HTTP_ARGS)

clean:
	rm -rf .venv var
