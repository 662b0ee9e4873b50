# Entry points. `make fleet` and `make test` do all their own set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
N ?= 200
BIN := $(VENV)/bin
ANSIBLE_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: image test-arm64 setup fleet teardown test test-lane-pytest test-lane-molecule test-quick test-unit test-integration test-fault test-molecule test-fleet lint agent-pyz bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Controller prerequisites (apt packages, kernel limits) come from a playbook on localhost.
setup: $(VENV)/.installed
	$(BIN)/ansible-playbook playbooks/controller_setup.yml

fleet: setup
	$(BIN)/ansible-playbook site.yml -i inventories/emulated -e device_count=$(N) $(ANSIBLE_ARGS)

teardown: $(VENV)/.installed
	$(BIN)/ansible-playbook playbooks/teardown.yml -i inventories/emulated $(ANSIBLE_ARGS)

agent-pyz: $(VENV)/.installed
	$(BIN)/python agent/build_pyz.py --out dist/edge-agent.pyz

# Everything CI runs: unit, integration, the reference, SSH, linear and fault fleets, molecule.
# After the set-up, two lanes run side by side (a fleet test spends most of its time waiting on
# containers, not on the CPU): pytest, then the fault fleet once molecule is likely done; and
# the molecule scenarios. Each lane's output is printed whole when it ends (make -O), and each
# ends with where the time went: pytest's slowest tests, each scenario's and each part's time.
test: $(VENV)/.installed
	$(PYTHON) tests/support/parts.py \
		setup -- $(MAKE) setup image ';;' \
		lanes -- $(MAKE) --no-print-directory -j2 --output-sync=target test-lane-pytest test-lane-molecule

# Lane 1: unit and integration tests and the reference, SSH and linear fleets; then the faults,
# which time reconnections and so run last, when the other lane has most likely finished.
test-lane-pytest:
	$(PYTHON) tests/support/parts.py \
		pytest -- $(BIN)/pytest tests -m 'not fault' --durations=20 ';;' \
		faults -- $(BIN)/pytest tests -m fault --durations=10

# Lane 2: the molecule scenarios.
test-lane-molecule:
	$(PYTHON) tests/support/parts.py molecule -- $(MAKE) --no-print-directory test-molecule

# The developer loop, a few minutes: lint, unit tests and one tiny fleet (2 devices, 1 host).
test-quick: $(VENV)/.installed
	$(PYTHON) tests/support/parts.py \
		setup -- $(MAKE) setup image ';;' \
		lint -- $(MAKE) lint ';;' \
		unit -- $(BIN)/pytest tests/unit -q ';;' \
		fleet -- $(BIN)/pytest tests/integration/test_quick_fleet.py -q

test-unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

test-integration: setup
	$(BIN)/pytest tests/integration -m 'not fault'

# Fault injection on a 20-device emulated fleet (about 6 minutes).
test-fault: setup
	$(BIN)/pytest tests/integration -m fault

# CI runs the role scenarios and arm64 (an amd64 broker and one arm64 device under QEMU). The
# default scenario runs the same create, converge (site.yml) and verify playbooks on amd64, which
# tests/integration/test_reference_fleet.py also covers; `molecule test` runs it.
MOLECULE_SCENARIOS ?= mosquitto edge_agent device_identity fleet_monitor prometheus telemetry_db arm64
# Ends with each scenario's wall time. Stops at the first scenario that fails, and fails.
test-molecule: setup image
	@summary=""; rc=0; \
	for s in $(MOLECULE_SCENARIOS); do \
	    start=$$(date +%s); \
	    $(BIN)/molecule test -s $$s || rc=$$?; \
	    t=$$(($$(date +%s) - start)); result=ok; [ $$rc -eq 0 ] || result="FAILED (exit $$rc)"; \
	    summary="$$summary$$(printf '  %-16s %3dm%02ds  %s' $$s $$((t / 60)) $$((t % 60)) "$$result")\n"; \
	    [ $$rc -eq 0 ] || break; \
	done; \
	printf '\nmolecule scenarios, wall time:\n%b' "$$summary"; \
	exit $$rc

test-arm64: setup
	$(MAKE) --no-print-directory test-molecule MOLECULE_SCENARIOS=arm64

# The emulated Pi image that molecule's docker platforms use (built once, offline).
image: setup
	$(BIN)/ansible-playbook playbooks/image.yml

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy agent consumer dataset
	$(BIN)/ansible-lint

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf .cache dist build
