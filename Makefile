# make run: install into .venv, migrate, serve on 127.0.0.1:$(PORT) (SQLite, in-memory layer).
# make test: install, then the whole suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
DEBUG ?= 1
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench worker clean

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) manage.py migrate --noinput
	DEBUG=$(DEBUG) $(VENV)/bin/daphne -b 127.0.0.1 -p $(PORT) scraperproj.asgi:application

worker: install
	$(PY) manage.py runworker scan-jobs

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) manage.py bench

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
