# offsim: `make up` runs the simulation, `make test` runs the tests. Both bootstrap .venv from the
# project's own files; the members come from workspace.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MEMBERS := $(shell $(PYTHON) -c 'import tomllib; print(" ".join(tomllib.load(open("workspace.toml", "rb"))["workspace"]["members"]))')
# A demo wants to see orders complete in seconds, not minutes; override with `make up SIM_SPEED=1`.
SIM_SPEED ?= 30

.PHONY: install up test lint bench compose-check secrets clean

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: workspace.toml requirements-dev.txt constraints.txt $(addsuffix /pyproject.toml,$(MEMBERS))
	$(PYTHON) -c 'import sys; sys.exit("offsim needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -r requirements-dev.txt $(addprefix -e ./,$(MEMBERS))
	touch $@

# Node tools for the tests (tekton-lint), exactly as package-lock.json pins them. Without npm,
# `make up` still works; the Tekton tests then fail and say why.
node_modules/.installed: package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund && touch $@; \
	else echo "make: npm not found: no tekton-lint for tests/deploy (needs Node.js 18+)" >&2; fi

up: install
	SIM_SPEED=$(SIM_SPEED) $(BIN)/offsim up

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The secrets of the container stacks (docs/deploy.md): every component's NATS user and Postgres
# role with a password, the NATS server's users file, the owner's password, the service token
# and the dashboard's control token, a file each in SECRETS (git-ignored). A rerun keeps the credentials and writes the files made
# from them again (after an edit of credentials.json: a rotation). Compose bind-mounts each file
# with its own owner and mode, and the containers run as other users than the file's owner:
# the files are made readable, the folder stays its owner's alone.
# Kubernetes: make secrets SECRETS=deploy/k8s/credentials/secrets
SECRETS ?= .secrets
secrets: install
	$(BIN)/offsim credentials $(SECRETS)

# The compose files run for real: every image built and the stack run on a throwaway Podman
# engine, base + dev and then base + prod (deploy/compose-check/README.md). As root it installs
# Podman from Debian when missing; elsewhere without Podman it skips and says why.
compose-check: install
	$(BIN)/python deploy/compose-check/check.py

# bench/services.py loads the services with wrk (Debian's package): installed here when missing,
# as root (apt-get), as compose-check installs Podman.
bench: install
	@command -v wrk >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || apt-get install -y -q wrk >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null)
	$(BIN)/python bench/services.py
	$(BIN)/python bench/etl.py
	$(BIN)/python bench/readings.py
	$(BIN)/python bench/generator.py
	$(BIN)/python bench/cluster.py

clean:
	rm -rf $(VENV) .offsim node_modules
