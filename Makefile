# gl-watchdog developer commands. `make test` is the README's test command; `.ci/run` calls it.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# `make demo DEMO_ARGS=--yes` approves the remediation without asking at the terminal.
DEMO_ARGS ?=
# The suite mostly waits on real services and subprocesses: two pytest-xdist workers halve its time
# (each module stays on one worker; each worker starts its own private redis-server).
# `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed

.PHONY: install demo run test lint bench bench-watchdog clean

# The example plugin (examples/plugin, docs/plugins.md) is installed too: its entry points are what
# the plugin tests load; reinstalled when either pyproject changes.
$(STAMP): pyproject.toml examples/plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -e examples/plugin
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/gl-watchdog demo $(DEMO_ARGS)

run: demo

test: install
	scripts/services.sh ensure
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile
	$(BIN)/pytest -q examples/plugin/tests

lint: install
	$(BIN)/ruff check gl_common orchestrator_core watchdog_sdk watchdog playbooks tests bench examples
	$(BIN)/ruff format --check gl_common orchestrator_core watchdog_sdk watchdog playbooks tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/engine.py

# The watchdog side and the orchestrator's capacity (docs/benchmarks.md), each at its default size
# (15-20 minutes in all); needs PostgreSQL on 127.0.0.1:5432 and the redis-server binary. Last, the
# detection-quality simulation (bench/detection.py: no services, about 20 s).
bench-watchdog: install
	scripts/services.sh ensure
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/diagnosis.py
	$(BIN)/python bench/capacity.py
	$(BIN)/python bench/detection.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
