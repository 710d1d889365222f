# The two commands: `make repro` (set up + run the pipeline) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `nirgan`; put the venv first on PATH for them.
RUN    := PATH="$(BIN):$$PATH"

# Compiled modules are cached under the venv, not beside the sources, and written even where the
# environment sets PYTHONDONTWRITEBYTECODE (this CI image does). Without a cache every stage,
# server and worker process compiled each module it imported again: importing torch, mlflow and
# a stage took 6.8-12.8 s instead of 2.9-5.7, and the tests' micro pipeline 91.6 s instead of
# 49.4 (benchmarks/bytecode_cache.py, idle 2-core machine). Every recipe, and what it starts,
# inherits the two variables.
export PYTHONPYCACHEPREFIX := $(CURDIR)/$(VENV)/pycache
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv repro test check-params clean-venv browser
.DEFAULT_GOAL := repro

# --no-compile: byte-compiling every installed module took a third of the install (433 s against
# 270 s, one after the other on a loaded 2-core machine); Python compiles what it imports.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

venv: $(STAMP)

check-params: venv
	$(RUN) nirgan check-params

repro: check-params
	$(RUN) dvc repro

# pytest-xdist workers, one more than the cores (at most 4), whole files per worker;
# tests/conftest.py gives each worker and what it starts one thread. The end-to-end tests spend
# part of their time waiting on servers and DVC, which a third worker fills on 2 cores: with the
# bytecode cache, 11 min 23 s of pytest with 3 workers against 12 min 54 s with 2, the cores busy
# 88 % of the time against 79 % (one run each, idle 2-core machine; without the cache, when
# compiling kept the cores busy, 3 workers had been slower: 16:06 against 14:43). Four workers kept
# the cores no busier (175 %): 17:58 against 16:32 and 18:05 for three (docs/benchmarks.md, s18).
# --no-loadscope-reorder: the files go out in conftest's longest-first order; xdist's own order
# (most tests first) sends the two-test end-to-end files last (a simulation of its scheduler with
# measured durations: 750 s of wall time against 723 s longest first; not measured side by side).
test: venv browser
	$(RUN) python -m pytest -q -n "$$($(BIN)/python -c 'from nirgan.cores import available_cores as a; print(min(4, a() + 1))')" \
	  --dist loadfile --no-loadscope-reorder --durations=25

# The MLflow UI browser test (tests/test_mlflow_ui.py) needs Debian's Chromium: installed here
# when missing and we are root with apt-get (CI, containers), else one line says how.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing Debian's chromium for the MLflow UI browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "make: apt-get could not install chromium; the MLflow UI browser test will fail" >&2; \
	else \
	  echo "make: chromium is missing and cannot be installed here (needs root and apt-get):" \
	    "run 'sudo apt-get install -y chromium', else the MLflow UI browser test fails" >&2; \
	fi

clean-venv:
	rm -rf $(VENV)


# The local orchestration stack (flows/stack.py): Prefect server, MLflow server and one
# Prefect worker per GPU, all on 127.0.0.1; state, logs and PIDs under .stack/ (git-ignored).
# Settings from the environment: NIRGAN_PREFECT_PORT (4200), NIRGAN_MLFLOW_PORT (5000),
# NIRGAN_GPUS (e.g. 0,1; default: every GPU nvidia-smi lists, else one unpinned worker),
# NIRGAN_POOL_LIMIT (default: the number of workers), NIRGAN_STACK_DIR (.stack).
.PHONY: stack stack-down stack-status

stack: venv
	$(RUN) $(BIN)/python flows/stack.py up

stack-down:
	$(BIN)/python flows/stack.py down

stack-status:
	$(BIN)/python flows/stack.py status
