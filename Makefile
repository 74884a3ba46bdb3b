# tinyops: `make run` sets up and runs the default pipeline; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tinyops-installed
EXTRAS := $(VENV)/.tinyops-extras
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check --no-deps

.PHONY: install extras run test lint bench lock clean firmware-tools team-tools node-tools

# Install exactly the versions in requirements.lock (no resolver run, so it is fast and the same
# every time), then the project itself in editable mode.
$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "tinyops needs Python 3.11: run make PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.lock
	$(PIP) --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

# The feature extras (requirements-extras.lock): the test and lint tools, and what only some
# features need. Never part of the quickstart's install.
$(EXTRAS): $(STAMP) requirements-extras.lock
	$(PIP) -r requirements-extras.lock
	@touch $(EXTRAS)

extras: $(EXTRAS)

# Debian packages of the firmware check: the Arm cross-compiler with newlib, and qemu-system-arm.
# Installed when missing and root; otherwise the command is printed, and deploy falls back to
# the estimates for microcontrollers, saying why.
FIRMWARE_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm
firmware-tools:
	@if [ "$$(dpkg-query -W -f='$${Status}\n' $(FIRMWARE_PACKAGES) 2>/dev/null | grep -c ' installed$$')" != "$(words $(FIRMWARE_PACKAGES))" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "tinyops: installing $(FIRMWARE_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FIRMWARE_PACKAGES) >/dev/null; \
	  else echo "tinyops: for the firmware check, run: sudo apt-get install $(FIRMWARE_PACKAGES)"; fi; \
	fi

# Debian's PostgreSQL server, for the team stack (`tinyops stack`, docs/team.md) and its tests.
# Installed when missing and root; otherwise the command is printed and those tests skip.
TEAM_PACKAGES := postgresql-15
team-tools:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "tinyops: installing $(TEAM_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEAM_PACKAGES) >/dev/null; \
	  else echo "tinyops: for the team stack, run: sudo apt-get install $(TEAM_PACKAGES)"; fi; \
	fi

# iproute2's `ip`, for the two-host tests and `tinyops bench --only nodes` (network namespaces,
# docs/nodes.md). Installed when missing and root; otherwise those tests run on 127.0.0.1.
node-tools:
	@if ! command -v ip >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "tinyops: installing iproute2"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null; \
	  else echo "tinyops: for the two-host tests, run: sudo apt-get install iproute2"; fi; \
	fi

run: $(STAMP) firmware-tools
	$(BIN)/tinyops run

test: $(EXTRAS) firmware-tools team-tools node-tools
	$(BIN)/python -m pytest

# Training throughput and overheads, interleaved runs, medians and ratios (bench/results.json).
bench: $(STAMP)
	$(BIN)/tinyops bench

lint: $(EXTRAS)
	$(BIN)/ruff check pipeline flows tests

# Re-resolve requirements.lock from requirements/*.txt (needs uv; installs it into the venv).
lock: $(STAMP)
	$(BIN)/python -m pip install -q 'uv==0.13.9'  # flwr (extras) wants uv<0.14
	$(BIN)/uv pip compile requirements/requirements.in \
	  --override requirements/overrides.txt -c requirements/constraints.txt \
	  --python-version 3.11.7 --python-platform x86_64-manylinux_2_28 \
	  $(if $(wildcard /opt/wheels),--find-links /opt/wheels) --no-header -o requirements.lock
	$(BIN)/uv pip compile requirements/extras.in -c requirements.lock \
	  --override requirements/extras-overrides.txt \
	  --python-version 3.11.7 --python-platform x86_64-manylinux_2_28 --no-header \
	  -o requirements-extras.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
