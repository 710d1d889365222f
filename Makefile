# The two commands: `make repro` (set up + run the pipeline) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `nirgan`; put the venv first on PATH for them.
RUN    := PATH="$(BIN):$$PATH"

.PHONY: venv repro test check-params clean-venv
.DEFAULT_GOAL := repro

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

venv: $(STAMP)

check-params: venv
	$(RUN) nirgan check-params

repro: check-params
	$(RUN) dvc repro

test: venv
	$(RUN) python -m pytest -q

clean-venv:
	rm -rf $(VENV)

-include mk/stack.mk
