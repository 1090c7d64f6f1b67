# The two commands a newcomer needs: `make run` (the whole site) and `make test` (the suite).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test bench lint clean

# System packages a bare Debian lacks: venv support (and Chromium for the browser tests).
$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3.11 python3.11-venv; }
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3.11-venv; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/python -m deepseek_web.stack

# Chromium for the browser tests, and CJK fonts so the zh-hans screenshots show characters.
/usr/bin/chromium:
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium fonts-noto-cjk

# Debian's docker-compose (v1): the tests validate docker/compose.yml with it; it needs no Docker engine.
/usr/bin/docker-compose:
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends docker-compose

test: $(STAMP) /usr/bin/chromium /usr/bin/docker-compose
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python manage.py bench_inference

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var/test-db.sqlite3*
