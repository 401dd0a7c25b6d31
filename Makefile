# pixdex: the two newcomer commands are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1

.PHONY: venv test demo bench-help clean-demo

# Always re-run the editable install: seconds when nothing changed, and it catches a missing dependency.
venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'

test: venv
	$(BIN)/python -m pytest --durations=25 --timeout=120

DEMO_DIR ?= demo-output
demo: venv
	$(BIN)/pixdex plugins
	$(BIN)/pixdex list indexes
	$(BIN)/pixdex config show --preset quick

clean-demo:
	rm -rf $(DEMO_DIR)
