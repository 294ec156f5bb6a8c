# make run   : set up (venv, data, migrations, demo catalog) and start web + worker + vector store
# make test  : the same set-up, then the whole test suite
# make bench : benchmarks (ingest, search, similar products) -> docs/benchmarks.md
# make evaluate [SIZE=full] : street-to-shop evaluation table -> docs/evaluation.md
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export YOLO_OFFLINE := 1
export HF_HUB_OFFLINE := 1
export DJANGO_SETTINGS_MODULE := webapp.settings

.PHONY: run test bench setup venv data migrate clean street2shop evaluate

$(STAMP): requirements.txt
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

test: setup
	@bash scripts/test.sh

bench: setup
	$(PY) scripts/bench.py

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
