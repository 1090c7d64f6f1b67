# The two commands a newcomer needs: `make run` (the whole site) and `make test` (the suite).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test test-fast test-postgres bench bench-stream bench-gpu lint clean

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

# GNU gettext: the tests extract the translatable strings (makemessages) and compile the zh-hans catalogue.
/usr/bin/xgettext:
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends gettext

# Every tier (tests/unit, app, integration, browser, system); the 25 slowest tests are listed at the end.
test: $(STAMP) /usr/bin/chromium /usr/bin/docker-compose /usr/bin/xgettext
	$(BIN)/python -m pytest --durations=25

# While you work: the unit and app tiers, in parallel (no worker, no browser, no whole stacks).
test-fast: $(STAMP) /usr/bin/xgettext
	$(BIN)/python -m pytest tests/unit tests/app -m "not browser and not integration" -n 2 --durations=10

# CI's second database: the tiers whose behaviour depends on it (the migration test covers both itself).
test-postgres: $(STAMP)
	$(BIN)/python -m pytest tests/app tests/integration -m "not browser" --durations=25

bench: $(STAMP)
	$(BIN)/python manage.py bench_inference

# The streaming paths at 1, 8, 48 and 128 streams on the default model: engine alone vs socket vs /v1 (SSE).
bench-stream: $(STAMP)
	$(BIN)/python manage.py bench_stream

# The same on a CUDA host with a real Hugging Face model (from the hub, or HF_HOME with HF_HUB_OFFLINE=1):
#   make bench-gpu BENCH_MODEL=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B BENCH_QUANT=none
BENCH_MODEL ?= deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
BENCH_QUANT ?= none
bench-gpu: $(STAMP)
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu needs a CUDA GPU')"
	DEEPSEEK_MODELS='[{"name": "bench", "path": "$(BENCH_MODEL)", "quantization": "$(BENCH_QUANT)", "max_context": 4096, "max_new_tokens": 256}]' \
		$(BIN)/python manage.py bench_stream --tokens 128 --levels 1,8,48,128

# Style, and the layers of DESIGN.md "Layout" (pyproject.toml [tool.importlinter]): no upward imports, no cycles.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) var/test-db.sqlite3*
