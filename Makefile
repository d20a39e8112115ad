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

# CI's GPT-2 / Gemma code-path mode (make test-gpt2): random-weight stand-ins served offline under the real hub
# names from a local hub cache (mechlab.models.standins), notebooks run headless at CI sizes (MECHLAB_SIZES=ci).
STANDIN_HF ?= build/standin-hf
STANDIN_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONHASHSEED=0 \
	HF_HUB_CACHE=$(abspath $(STANDIN_HF))/hub MECHLAB_SIZES=ci
GPT2_NOTEBOOKS := notebooks/01_tokens_and_logits.ipynb notebooks/02_attention_patterns.ipynb \
	notebooks/03b_reading_weights.ipynb notebooks/04_direct_logit_attribution.ipynb notebooks/05_patching_and_attribution.ipynb \
	notebooks/06_backup_heads_and_self_repair.ipynb
GEMMA_NOTEBOOKS := notebooks/07_cot_case_study.ipynb

.PHONY: setup course test test-gpt2 standins gpt2-tokenizer unit nbval exercises lab lint bench clean site site-test

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e ".[course,dev,nnsight,site]"
	@$(VPY) -c "import torch, transformer_lens; import importlib.metadata as m; print('mechlab setup: torch', torch.__version__, '| transformer_lens', m.version('transformer_lens'))"
	@touch $(STAMP)

## Run every notebook in notebooks/ and solutions/ headless on the offline model; executed copies + HTML in build/.
course: setup gpt2-tokenizer
	$(OFFLINE) $(VPY) -m mechlab.course.run notebooks solutions --out build

## GPT-2's real tokenizer, rebuilt once from a file in openai-whisper's sdist (PyPI only) into the mechlab cache.
gpt2-tokenizer: setup
	$(VPY) -m mechlab.core.gpt2_tokenizer

## Unit tests, then nbval on every notebook in notebooks/ and solutions/.
test: setup gpt2-tokenizer
	$(VPY) -m ruff check .
	$(OFFLINE) $(VPY) -m pytest tests -q
	$(OFFLINE) $(VPY) -m pytest notebooks solutions -q --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

## Build the stand-ins (gpt2, google/gemma-2b: random weights, marked STAND-IN) into $(STANDIN_HF)/hub.
standins: setup
	$(OFFLINE) $(VPY) -m mechlab.models.standins build --out $(STANDIN_HF)

## CI's GPT-2 mode: the GPT-2 branch of units 01, 02, 03b, 04, 05, 06 (with 06's Gemma cell) and the Gemma branch of
## 07 (bfloat16) on the stand-ins, at CI sizes; only the notebooks/ copies (solutions/ share their code paths). No cell
## may fail; learned-behaviour asserts are skipped on a stand-in and listed by name. ~10 min on 2 cores (README).
test-gpt2: standins
	env -u MECHLAB_MODEL $(STANDIN_ENV) $(VPY) -m mechlab.course.run $(GPT2_NOTEBOOKS) --out build/gpt2-mode \
		--no-html --expect-model gpt2
	env -u MECHLAB_MODEL $(STANDIN_ENV) MECHLAB_DTYPE=bfloat16 $(VPY) -m mechlab.course.run $(GEMMA_NOTEBOOKS) \
		--out build/gemma-mode --no-html --expect-model google/gemma-2b

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
