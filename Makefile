# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test chaos lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The dashboard's front-end packages (Chart.js), pinned by package-lock.json and served
# as static files; reinstalled only when the package files change.
NODE_STAMP := node_modules/.installed-stamp

# Without npm everything still runs; the dashboard then shows its figures without charts.
$(NODE_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --no-audit --no-fund --ignore-scripts && touch $(NODE_STAMP); \
	else \
		echo "npm not found: the dashboard's charts (Chart.js) are not installed; see docs/dashboard.md"; \
	fi

install: $(STAMP) $(NODE_STAMP)

demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m demo $(DEMO_FLAGS)

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

chaos: $(STAMP)
	$(BIN)/python -m pytest -m chaos --override-ini="addopts=-ra"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# The control plane with the Django, DRF and Celery stubs; the agent strictly, also as Python 3.10 sees it.
typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --python-version 3.10 agent

# Retrain the project's own vision models into zoo/ (docs/models.md); torch comes with the
# `train` extra and is never a run-time dependency.
.PHONY: models
models: $(STAMP)
	# The exact version first: a bare range would take the newest torch with several GB of CUDA packages.
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet -e '.[train]'
	$(BIN)/python -m zoo.train

clean:
	rm -rf var .pytest_cache .hypothesis
