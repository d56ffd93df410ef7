# landcover — every target that needs the environment creates it first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LC     := $(BIN)/lc
STAMP  := $(VENV)/.installed

EXP     ?= demo
CONFIG  ?= experiments/$(EXP).yaml
SPACE   ?= studies/demo.yaml
N       ?= 50
WORKERS ?= 1
MODEL   ?= models:/landcover/Production
# empty: the experiment's product of the other area (with its WorldCover tiles)
PRODUCT ?=
WORLDCOVER_DIR ?= data/$(EXP)/raw
OUT     ?= data/$(EXP)/maps/predicted.tif
# the sample `make predict` draws from the map and labels from WorldCover (read at the points)
SAMPLE_N ?= 1000
POINTS  ?= $(basename $(OUT)).points.gpkg
PORT    ?= 5000
REGION  ?= regions/demo.yaml
# the REGION's out folder and WorldCover tiles: one sample design over the mapped region, read against WorldCover
REGION_OUT ?= data/region/maps
REGION_WORLDCOVER ?= data/region/raw
# the demo: the first DEMO_N trials of the study, and a shorter refit than the space's (24 epochs) so that it
# ends within 15 minutes on 2 cores; DEMO_REFIT= (empty) refits as make study does. A training step in float32
# costs about 4.6 times one in bfloat16 on a CPU that computes it natively (what `precision: auto` detects), so
# without it the demo runs 2 trials and a 3-epoch refit, and refits only the best trial, not also the
# experiment's recipe (refit_recipe)
PRECISION = $(eval PRECISION := $(shell $(BIN)/python -c \
	'from lc.learning.hardware import resolve_precision as r; print(r("auto", "cpu"))'))$(PRECISION)
DEMO_N  ?= $(if $(filter 32-true,$(PRECISION)),2,4)
DEMO_REFIT ?= train.max_epochs=$(if $(filter 32-true,$(PRECISION)),3,6)
DEMO_RECIPE ?= $(if $(filter 32-true,$(PRECISION)),--no-refit-recipe)

export NO_ALBUMENTATIONS_UPDATE := 1
# Keep glibc from handing the U-Net's large working buffers back to the kernel every step.
export MALLOC_MMAP_THRESHOLD_ := 268435456
export MALLOC_TRIM_THRESHOLD_ := 1073741824

.PHONY: help setup lock data train baseline study register ui predict region report demo test bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(STAMP)  ## create .venv and install everything (idempotent)

lock: $(STAMP)  ## record the exact versions installed now in constraints.txt
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

data: $(STAMP)  ## make (synthetic or acquired) products and prepare the scenes of EXP
	$(LC) data $(CONFIG)

train: data  ## one training run of EXP, logged to MLflow
	$(LC) train $(CONFIG)

baseline: data  ## per-pixel gradient boosting on the splits of EXP, with MODEL's harmonisation, in MLflow
	$(LC) baseline $(CONFIG) --model $(MODEL)

study: data  ## Optuna study of N trials over SPACE (resumable; WORKERS=K in parallel)
	$(LC) study $(SPACE) --n-trials $(N) --workers $(WORKERS)

register: $(STAMP)  ## register the best trial of the study in SPACE as `landcover`
	$(LC) register --space $(SPACE)

ui: $(STAMP)  ## MLflow UI on 127.0.0.1:PORT; prints links to the trials of the study in SPACE (table, charts)
	$(LC) ui --port $(PORT) --space $(SPACE)

predict: data  ## map PRODUCT (default: the experiment's other area) with MODEL; assess it on a sample of SAMPLE_N points
	$(LC) predict --model $(MODEL) --out $(OUT) --overwrite \
		$(if $(PRODUCT),$(PRODUCT) --worldcover-dir $(WORLDCOVER_DIR),--experiment $(CONFIG))
	$(LC) sample $(OUT) --n $(SAMPLE_N) --seed 0 --out $(POINTS) --overwrite
	$(LC) evaluate $(OUT) --points $(POINTS) --truth $(basename $(OUT)).truth.tif

region: $(STAMP) $(if $(filter regions/demo.yaml,$(REGION)),data/region/raw/synth.json)  ## map every product of REGION on Dask with MODEL (resumable), mosaic per CRS, a sample of SAMPLE_N points (needs a model: make demo)
	$(LC) map $(REGION) --model $(MODEL)
	$(LC) sample $(REGION_OUT) --n $(SAMPLE_N) --seed 0 --out $(REGION_OUT)/points.gpkg --overwrite
	$(LC) evaluate $(REGION_OUT) --points $(REGION_OUT)/points.gpkg --worldcover-dir $(REGION_WORLDCOVER)

data/region/raw/synth.json: | $(STAMP)
	$(LC) synth data/region/raw --region

report: $(STAMP)  ## figures and report.md/html of the study in SPACE
	$(LC) report --space $(SPACE) --map $(OUT) $(if $(wildcard $(REGION_OUT)/region.json),--region $(REGION_OUT))

demo: $(STAMP)  ## the whole chain offline: synth, prepare, study, registry, baseline, predict, report
	$(MAKE) --no-print-directory data
	$(LC) study $(SPACE) --n-trials $(DEMO_N) $(if $(DEMO_REFIT),--refit $(DEMO_REFIT)) $(DEMO_RECIPE)
	$(MAKE) --no-print-directory baseline
	$(MAKE) --no-print-directory predict
	$(MAKE) --no-print-directory report
	@echo; echo "Demo done. Report: reports/demo/report.html (and report.md). Compare the runs: make ui"

test: $(STAMP)  ## the test suite
	$(BIN)/python -m pytest -q

bench: data  ## benchmarks; each prints ratios against a baseline measured in the same run
	for b in prepare sharpen loader train harmonisation predict study baseline region; do \
		echo "== bench/bench_$$b.py"; $(BIN)/python bench/bench_$$b.py || exit 1; done

clean:  ## remove generated data, reports and tracking (keeps .venv)
	rm -rf data reports mlruns/* studies/*.db studies/*.journal
