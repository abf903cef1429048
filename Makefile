# Two entry points: `make serve` and `make test`. Both create the virtual environment first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
TORCH_CPU_VERSION ?= 2.13.0
# Where that CPU build comes from: pip's configured indexes by default (a local wheel on the
# project's CI machines). PyPI's Linux wheels are CUDA builds, so elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the small CPU one.
TORCH_INDEX ?=

.PHONY: setup serve test lint bench clean constraints

# $(call apt_tool,COMMAND,PACKAGE,WHAT NEEDS IT): the Debian package is installed where COMMAND
# is missing if we are root with apt-get; otherwise one line says so, and setup still succeeds.
apt_tool = command -v $(1) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2) >/dev/null 2>&1 || \
	{ apt-get update -q >/dev/null 2>&1 && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2) >/dev/null 2>&1; }; }; } || \
	echo "$(1) not installed: $(3) (apt-get install $(2))"

# wrk drives `mas-stream bench-serving`; headless Chromium renders /docs offline in the tests.
setup: $(VENV)/.installed
	@$(call apt_tool,wrk,wrk,the serving benchmark needs it)
	@$(call apt_tool,chromium,chromium,the offline /docs browser test needs it)
	@$(call apt_tool,prometheus,--no-install-recommends prometheus,the tests in tests/ops need it and its promtool)

# Without a GPU, pin the CPU build of torch first so the project's range is already met and pip
# does not pull the multi-GB CUDA build. With a GPU, the range in pyproject.toml picks a CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
			"torch==$(TORCH_CPU_VERSION)"; \
	fi
	$(BIN)/python -m pip install --quiet --constraint constraints.txt -e '.[dev]'
	touch $@

# `make serve PORT=8080 HOST=0.0.0.0`: passed on as MAS_PORT / MAS_HOST (unset: the settings').
serve: setup
	$(if $(PORT),MAS_PORT=$(PORT)) $(if $(HOST),MAS_HOST=$(HOST)) $(BIN)/mas-stream serve

# Two pytest processes, each taking whole test files (their module fixtures stay in one process):
# most tests wait on the processes they start, so two keep a 2-core machine busy (842 s -> 498 s).
test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/mas-stream bench --suite split-digits --methods finetune,mas,ewc,si,joint --seeds 0

# After changing dependencies in pyproject.toml: pin what the virtualenv now has (see the file).
constraints: setup
	$(BIN)/python deploy/constraints.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
