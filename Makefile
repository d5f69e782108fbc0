# mediamill: `make dev` runs everything locally, `make test` runs the whole suite.
# Both start with `make install`, which adds what is missing and is safe to repeat.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
REDIS_URL ?= redis://127.0.0.1:6379/0
export PATH := $(BIN):$(PATH)

SYSTEM_TOOLS := redis-server ffmpeg ffprobe
DEV_PROCESSES := web thumbnails video metadata webhooks beat

.PHONY: install system-deps test-services dev test lint bench clean

install: system-deps $(VENV)/.installed

# System packages when missing: apt-get as root (or via sudo), Homebrew on a Mac.
system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "Installing:$$missing"; \
	pkgs=$$(echo "$$missing" | sed -e 's/redis-server/redis-server/' -e 's/ffprobe//' ); \
	if command -v apt-get >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
		else echo "make install: need root or sudo to apt-get install$$pkgs" >&2; exit 1; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$pkgs >/dev/null; \
	elif command -v brew >/dev/null; then \
		brew install $$(echo "$$pkgs" | sed -e 's/redis-server/redis/' -e 's/python3-venv//'); \
	else echo "make install: please install$$pkgs with your package manager" >&2; exit 1; fi

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# What the test suite talks to beyond its own private redis-server and moto_server:
# PostgreSQL (for the DATABASE_URL=postgresql:// tests), started when installed but down,
# a chromium for the browser tests (tests/browser) and docker-compose to validate
# docker/compose.yaml, installed with apt as root.
test-services:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing chromium"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "make test: no chromium (apt-get install chromium, or brew install --cask chromium); the browser tests will be skipped" >&2; fi; \
	fi
	@if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing docker-compose (validates docker/compose.yaml)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
		else echo "make test: no docker compose (apt-get install docker-compose); the compose check will be skipped" >&2; fi; \
	fi
	@if ! pg_isready -q -h 127.0.0.1 2>/dev/null; then \
		if ! command -v pg_ctlcluster >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing postgresql"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi; \
		if command -v pg_ctlcluster >/dev/null; then \
			pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | tail -1) main start 2>/dev/null || true; fi; \
		pg_isready -q -h 127.0.0.1 || echo "make test: no PostgreSQL on 127.0.0.1:5432; its tests will be skipped" >&2; \
	fi

test: install test-services
	$(BIN)/pytest -q --durations=15  # the slowest, to keep the suite under 15 min on 2 cores

lint: install
	$(BIN)/ruff check config media web tasks tests bench

bench: install
	$(BIN)/python bench/upload.py

dev: export MEDIAMILL_LOG_FORMAT ?= text
dev: install
	@redis_port=$$($(BIN)/python -c 'import sys; from urllib.parse import urlsplit; print(urlsplit(sys.argv[1]).port or 6379)' '$(REDIS_URL)'); \
	started=""; \
	if ! $(BIN)/python -c 'import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()' '$(REDIS_URL)' 2>/dev/null; then \
		echo "Starting redis-server on 127.0.0.1:$$redis_port (stopped again when this stops)"; mkdir -p instance; \
		redis-server --daemonize yes --bind 127.0.0.1 --port $$redis_port --dir $(CURDIR)/instance \
			--logfile $(CURDIR)/instance/redis.log --pidfile $(CURDIR)/instance/redis.pid || exit 1; \
		started=1; sleep 0.5; \
	fi; \
	stop_redis() { if [ -n "$$started" ]; then kill $$(cat $(CURDIR)/instance/redis.pid) 2>/dev/null || true; fi; }; \
	$(BIN)/flask --app web release || { stop_redis; exit 1; }; \
	key=$$($(BIN)/flask --app web create-api-key dev | tail -1) || { stop_redis; exit 1; }; \
	echo; echo "mediamill is starting at http://127.0.0.1:$${PORT:-5000}"; \
	echo "Log in with this API key (tenant 'dev'):"; echo "  $$(echo "$$key" | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"; \
	echo "  $$key"; echo; \
	trap 'true' INT TERM; \
	$(BIN)/honcho start -f Procfile -p $${PORT:-5000} $(DEV_PROCESSES); status=$$?; \
	stop_redis; exit $$status
