# make demo: set up, train both stages on the default configs, write 64 samples.
# make test: set up, run the fast tier of the test suite (~2.5 min on 2 cores); make test-all: every tier
#            (slow, distributed, browser: ~19 min), what CI runs. Both create .venv when missing.
# make app: also install the app extra (gradio), then serve the browser demo on 127.0.0.1:7860
#           (runs/prior when trained, else the shipped runs in pretrained/; the page says which).
# make pretrained: retrain and re-measure the shipped runs in pretrained/ (~90 min on 2 cores).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
APP_STAMP := $(VENV)/.app-stamp

.PHONY: demo test test-all app data bench clean-runs pretrained

# pip byte-compiles at install on purpose: with PYTHONDONTWRITEBYTECODE set (as here)
# --no-compile made every later import of torch recompile it (13 s instead of 2 s).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(APP_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[app]'
	touch $(APP_STAMP)

data: $(STAMP)
	$(PY) -m tokenizer.data mnist

demo: data
	$(VENV)/bin/accelerate launch tokenizer/train.py
	$(VENV)/bin/accelerate launch prior/train.py
	$(PY) sampling/generate.py --n 64

test: data $(APP_STAMP)
	$(PY) -m pytest -q -m "not slow and not distributed and not browser"
	@echo "(the fast tier; make test-all runs every tier: slow, distributed and browser, as CI does)"

test-all: data $(APP_STAMP)
	$(PY) -m pytest -q

app: $(APP_STAMP)
	$(PY) sampling/app.py

pretrained: data
	$(PY) pretrained/build.py

clean-runs:
	rm -rf runs samples
