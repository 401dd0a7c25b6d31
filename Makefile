# pixdex: the two newcomer commands are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1

.PHONY: venv test lint format demo bench-help clean-demo screenshot

# Always re-run the editable install: seconds when nothing changed, and it catches a missing dependency.
venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'

# Lint and format check first (seconds), then the suite.
test: venv lint
	$(BIN)/python -m pytest --durations=25 --timeout=120

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Rewrite the tree into the project's format and fix what ruff can fix by itself.
format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The main job on the bundled sample (1,200 real Fashion-MNIST images): train, evaluate on
# the held-out test/ split, predict held-out images, index the training images, search the
# index and write an HTML contact sheet of the results. A minute or two on 2 cores.
DEMO_DIR ?= demo-output
SAMPLE = $$($(BIN)/python -c 'from pixdex.sample import sample_path; print(sample_path())')
demo: venv
	@set -e; sample=$(SAMPLE); \
	echo "== train on $$sample/train (validation: a stratified 10% of it)"; \
	$(BIN)/pixdex train "$$sample" -o $(DEMO_DIR)/run --force; \
	echo "== evaluate on the held-out $$sample/test"; \
	$(BIN)/pixdex evaluate $(DEMO_DIR)/run "$$sample" --confusion $(DEMO_DIR)/confusion.png; \
	echo "== predict three held-out images"; \
	$(BIN)/pixdex predict $(DEMO_DIR)/run "$$sample/test/Sneaker/00705.png" "$$sample/test/Bag" -k 3 | head -5; \
	echo "== index the training images with the trained model, then search it with held-out queries"; \
	$(BIN)/pixdex index build $(DEMO_DIR)/run "$$sample/train" -o $(DEMO_DIR)/index --force; \
	$(BIN)/pixdex search $(DEMO_DIR)/index "$$sample/test/Sneaker/00705.png" "$$sample/test/Bag/01171.png" \
	  "$$sample/test/Trouser" -k 8 --html $(DEMO_DIR)/search.html --format csv | head -9; \
	echo "== done: $(DEMO_DIR)/run (the model), $(DEMO_DIR)/index (the index), open $(DEMO_DIR)/search.html"; \
	echo "== serve the index with a web page and a JSON API (Ctrl-C stops): $(BIN)/pixdex serve $(DEMO_DIR)/index"

# A screenshot of the `pixdex serve` page on the demo's index, for docs/serve.md (headless
# Debian chromium through Playwright; needs `make demo` first).
screenshot: venv
	$(BIN)/python docs/tools/serve_screenshot.py $(DEMO_DIR)/index docs/images/serve-page.png

clean-demo:
	rm -rf $(DEMO_DIR)
