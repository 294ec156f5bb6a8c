# make run   : set up (venv, data, migrations, demo catalog) and start web + worker + vector store
# make test  : the same set-up, then the whole test suite (test-unit, test-integration, test-standalone)
# make test-unit        : pytest -m "not integration" (fast, no services)
# make test-integration : pytest -m "integration and not slow" (real processes and services; the slow fault
#                         scenarios run in `python -m benchmarks.reliability`), on the engine MILVUS_ENGINE names
#                         (Milvus Lite by default)
# make test-standalone  : the integration tests that reach Milvus again, on a real Milvus standalone server
#                         (MILVUS_ENGINE=standalone: scripts/milvus_standalone.py, no Docker)
# make lint  : requirements in sync with pyproject.toml, ruff check, ruff format --check, mypy
# make audit : known vulnerabilities in the runtime dependencies (pip-audit; skipped, with the reason, offline)
# make bench : benchmarks (ingest, search, similar products) -> docs/benchmarks.md
# make reliability : fault scenarios, 50-shopper load, hostile inputs -> docs/reliability.md
# make scale : serving at 10k / 100k / 1M products on a real Milvus standalone server -> docs/scale.md
# make requirements : regenerate requirements/*.txt from pyproject.toml (the source of the pins)
# make hooks : install the pre-commit hooks (ruff, mypy from the venv) into .git/hooks
# make evaluate [SIZE=full] : street-to-shop evaluation table -> docs/evaluation.md
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export YOLO_OFFLINE := 1
export HF_HUB_OFFLINE := 1
export DJANGO_SETTINGS_MODULE := webapp.settings

.PHONY: run test test-unit test-integration test-standalone lint audit requirements hooks bench reliability scale setup venv \
	data migrate clean \
	street2shop evaluate

# requirements.txt is `-r requirements/dev.txt`; dev includes training, training includes runtime.
REQUIREMENTS := requirements.txt requirements/runtime.txt requirements/training.txt requirements/dev.txt

$(STAMP): $(REQUIREMENTS)
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

data:
	@bash scripts/fetch_fashion_mnist.sh

migrate: venv
	$(PY) manage.py migrate --noinput

setup: venv data migrate

run: setup
	@bash scripts/run.sh

# Three pytest runs (scripts/test_all.sh; scripts/test.sh passes its arguments on to pytest), each from a fresh
# test state. Both engines: every integration test on Milvus Lite (the default), and on a real Milvus standalone
# server only the tests that reach Milvus (marked `milvus` by tests/conftest.py: they use the milvus_uri fixture),
# less those marked `engine_agnostic` (Milvus is only on their way: a broker, a worker's boot, the localize worker, a
# page's UI). The standalone run runs beside the other two, in its own test state, database and Redis databases.
test: setup
	@bash scripts/test_all.sh

test-unit: setup
	@bash scripts/test.sh -m "not integration"

test-integration: setup
	@bash scripts/test.sh -m "integration and not slow"

test-standalone: setup
	@MILVUS_ENGINE=standalone bash scripts/test.sh -m "integration and milvus and not slow and not engine_agnostic"

# Runs every check and fails at the end if any failed, so one run shows all problems.
lint: venv
	@status=0; \
	echo "+ requirements/sync.py --check"; $(PY) requirements/sync.py --check || status=1; \
	echo "+ ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "+ ruff format --check ."; $(VENV)/bin/ruff format --check . || status=1; \
	echo "+ mypy"; $(VENV)/bin/mypy || status=1; \
	exit $$status

audit: venv
	@bash scripts/audit.sh

requirements:
	$(PYTHON) requirements/sync.py

hooks: venv
	$(VENV)/bin/pre-commit install

bench: setup
	$(PY) -m benchmarks

# Every fault scenario at full scale, the load run and the hostile inputs -> docs/reliability.md (+ .json).
reliability: setup
	$(PY) -m benchmarks.reliability

# Catalogs persist in PostgreSQL visnet_scale_<N> and var/scale-<N>/; `python -m benchmarks.scale --help` for sizes,
# steps (--only) and --rebuild.
scale: setup
	$(PY) -m benchmarks.scale

clean:
	rm -rf var

street2shop: venv data
	$(PY) -m ml.data.street2shop --size full --contact-sheet docs/street2shop_examples.png

SIZE ?= small
VISNET ?= models/visnet-default
VISNET_DEEP_ONLY ?= models/visnet-deep-only
evaluate: venv data
	$(PY) -m ml.evaluation.evaluate --size $(SIZE) --visnet $(VISNET) --visnet-deep-only $(VISNET_DEEP_ONLY) \
	  $(if $(filter full,$(SIZE)),,--out docs/evaluation-$(SIZE).md --plot docs/evaluation_recall_at_k-$(SIZE).png)
