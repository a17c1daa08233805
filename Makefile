# histo: `make demo` and `make test` work on a fresh machine; both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Reproduction (scripts/paper.py): DATA=<BreaKHis_v1 dir>; GPUS=<n> (DDP when > 1); PRECISION=bf16-mixed|16-mixed;
# OUT=<dir> (default outputs/<protocol>-<time>).
DATA ?=
GPUS ?= 1
PRECISION ?=
OUT ?=
PAPER := $(BIN)/python scripts/paper.py
PAPER_ARGS = $(if $(DATA),--data $(DATA)) --gpus $(GPUS) $(if $(PRECISION),--precision $(PRECISION)) $(if $(OUT),--out $(OUT))

.PHONY: install demo app test lint clean help paper paper-patient paper-stain paper-smoke leak-check

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(VENV)/.installed  ## create .venv and install histo with its dev extras

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

demo: install  ## train V1-B0 for a few epochs on the built-in synthetic dataset (CPU, minutes)
	$(BIN)/histo-train experiment=demo

# The newest finished demo run (outputs/demo/runs/<time>/run.json), if any.
DEMO_RUN = $(shell ls -d outputs/demo/runs/*/run.json 2>/dev/null | sort | tail -n 1 | xargs -r dirname)
APP_PORT ?= 7860

app: install  ## the interactive page on the demo run (trains it first if missing); prints the URL
	@run="$(DEMO_RUN)"; if [ -z "$$run" ]; then $(MAKE) demo && run=$$(ls -d outputs/demo/runs/*/run.json | sort | tail -n 1 | xargs dirname); fi; \
	examples=$$($(BIN)/python -c "import json,sys; print(json.load(open(sys.argv[1]))['data']['root'])" "$$run/run.json"); \
	echo "histo-app on the demo run $$run: open http://127.0.0.1:$(APP_PORT) (Ctrl+C stops it)"; \
	$(BIN)/histo-app runs="[$$run]" examples="$$examples" server.port=$(APP_PORT)

test: install  ## run the test suite
	$(BIN)/python -m pytest

paper: install  ## the ten models, the V1/V2/V1+V2 ensembles, a report beside the paper's numbers (DATA=...)
	$(PAPER) paper $(PAPER_ARGS)

paper-patient: install  ## the same on 5 patient-disjoint folds, mean and spread across folds (DATA=...)
	$(PAPER) patient $(PAPER_ARGS)

paper-stain: install  ## V1-B0 without and with Vahadane, same split and seed (DATA=...)
	$(PAPER) stain $(PAPER_ARGS)

paper-smoke: install  ## the whole `make paper` pipeline on synthetic data, tiny, one epoch, CPU (minutes)
	$(PAPER) paper --smoke $(if $(OUT),--out $(OUT))

leak-check: install  ## the paper's leak measured: image vs patient split, same model and images, 3 seeds (DATA=..., default the shared sample; CPU, minutes)
	$(BIN)/python scripts/leak_check.py --data $(or $(DATA),../shared/data/breakhis-sample/BreaKHis_v1) $(if $(OUT),--out $(OUT))

lint: install  ## ruff
	$(BIN)/ruff check histo tests scripts

clean:  ## remove run outputs (keeps .venv)
	rm -rf outputs/* .pytest_cache
