# mechlab: the two commands a newcomer needs are `make course` and `make test` (see README.md).
#
# TORCH_SPEC picks the torch build installed when the venv has no importable torch. The default is the CPU
# build; on a CUDA machine run e.g. `make test TORCH_SPEC=torch` (or install torch yourself first: an
# importable torch is never replaced).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.mechlab-installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MECHLAB_MODEL=$${MECHLAB_MODEL:-offline} PYTHONHASHSEED=0

.PHONY: setup course test unit nbval exercises lab lint bench clean site site-test

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e ".[course,dev,nnsight,site]"
	@$(VPY) -c "import torch, transformer_lens; import importlib.metadata as m; print('mechlab setup: torch', torch.__version__, '| transformer_lens', m.version('transformer_lens'))"
	@touch $(STAMP)

## Run every notebook in notebooks/ and solutions/ headless on the offline model; executed copies + HTML in build/.
course: setup
	$(OFFLINE) $(VPY) -m mechlab.course.run notebooks solutions --out build

## Unit tests, then nbval on every notebook in notebooks/ and solutions/.
test: setup
	$(VPY) -m ruff check .
	$(OFFLINE) $(VPY) -m pytest tests -q
	$(OFFLINE) $(VPY) -m pytest notebooks solutions -q --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

unit: setup
	$(OFFLINE) $(VPY) -m pytest tests -q

## Regenerate exercises/ from solutions/ (the single source).
exercises: setup
	$(VPY) -m mechlab.course.exercises solutions exercises

lab: setup
	$(VPY) -m jupyter lab --notebook-dir=.

lint: setup
	$(VPY) -m ruff check .

bench: setup
	$(OFFLINE) $(VPY) -m benchmarks.run --size tiny

## The course site from the committed, executed notebooks (nothing is re-executed): HTML in build/site.
site: setup
	$(OFFLINE) $(VPY) -m mechlab.course.site

## The built site in headless chromium (Debian's package, no browser download): every page, figure, attention
## view, link and slide deck, search, and screenshots (build/site-check). `make test` runs the same check.
site-test: site
	$(VPY) -m mechlab.course.site_check build/site --screenshots build/site-check

clean:
	rm -rf build .pytest_cache
