# Set-up uses pip only: torch 2.14.1 / torchvision 0.29.1 install from local disk on the project's
# machines (see README.md); an unpinned torch would pull a multi-GB build over the network.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/scan run
	@echo
	@echo "scan is installed in $(VENV)/. To type 'scan' directly: source $(VENV)/bin/activate"
	@echo "(or call $(BIN)/scan); the run folder and the next commands are printed above."

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
