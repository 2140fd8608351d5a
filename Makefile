# Two commands for a fresh machine (see README.md):
#   make demo   -> installs what it needs, runs the main job on the embedded demo checkpoint
#   make test   -> installs what it needs, runs the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the second environment: vLLM's CPU build pins an older transformers (scripts/vllm-env.sh)
VLLM_VENV ?= .venv-vllm
OUT ?= report
# The CPU wheel of torch; GPU users: see README ("Using a GPU").
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install system-deps vllm-env lab docs clean

# constraints.txt (scripts/lock.sh) pins every version to the set the suite last passed on
$(VENV)/.installed: pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[notebook,nnsight,train,dev,docs]"
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

demo: install system-deps
	$(PY) -m workbench demo --out $(OUT)

vllm-env:
	bash scripts/vllm-env.sh $(VLLM_VENV)

# JupyterLab on the notebooks (as root it needs --allow-root)
lab: install
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root,)

# the documentation site, built strictly (any warning fails) into site/; open site/index.html
docs: install
	$(PY) -m sphinx -b html -n -W --keep-going -q -d build/doctrees docs site

test: install system-deps vllm-env
	bash scripts/run-tests.sh $(PY)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OUT)
