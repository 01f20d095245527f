# Every target creates .venv and installs what it needs; all are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# Until the embedded stack lands, `run` validates the example policies and walks
# through what they decide.
run: $(STAMP)
	$(VENV)/bin/clrk validate -f examples/
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" sh examples/tour.sh

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
