# make demo: set up, train both stages on the default configs, write 64 samples.
# make test: set up, run the test suite. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test data bench clean-runs

# pip byte-compiles at install on purpose: with PYTHONDONTWRITEBYTECODE set (as here)
# --no-compile made every later import of torch recompile it (13 s instead of 2 s).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m tokenizer.data mnist

demo: data
	$(VENV)/bin/accelerate launch tokenizer/train.py
	$(VENV)/bin/accelerate launch prior/train.py
	$(PY) sampling/generate.py --n 64

test: data
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs samples
