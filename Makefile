# Quick start (a fresh machine): `make tour` or `make test`; each does all set-up itself.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
EXTRAS  := dev
PYTEST_ARGS ?=

.PHONY: setup tour test lint bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml constraints.txt Makefile scripts/setup.sh
	bash scripts/setup.sh "$(VENV)" "$(EXTRAS)"
	touch $@

tour: setup
	$(VENV)/bin/neuratlas tour

# pytest exits 5 when it collects no test: that must fail, not pass silently.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

# the lint rules and the one format (`ruff format src tests` writes it)
lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
