# Every target creates .venv and installs what it needs; all are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint golden clean

# As root, the system tools the network tests and the transparent dialer use.  Not
# root: nothing is installed and those tests skip, saying why.
SYSTEM_TOOLS := iptables dnsmasq dig nc curl openssl ip
SYSTEM_PKGS := iptables dnsmasq-base bind9-dnsutils netcat-openbsd curl openssl iproute2

$(STAMP): pyproject.toml clrk_runtime/protos.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=0; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	  if [ $$missing = 1 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PKGS); \
	  fi; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m clrk_runtime.protos
	@touch $@

# The whole gateway on the example policy, with a demo that needs no internet: it
# builds its own network namespaces (needs root), runs a scripted agent against local
# upstreams, prints what was allowed and denied, and keeps running until Ctrl-C.
run: $(STAMP)
	$(VENV)/bin/clrk validate -f examples/
	$(PY) -m clrk_cli.demo

# The layer contracts first: an upward or sideways import fails the suite like a test.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

# Regenerate the golden files of both stages (compile, then translate); review the diff.
golden: $(STAMP)
	CLRK_UPDATE_GOLDEN=1 $(PY) -m pytest -q \
	  tests/policy/test_compile_golden.py tests/xds/test_translate_golden.py

lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
