# segkd: `make test` and `make demo` are the two commands of the README's quick start.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast test-long lint demo deploy deploy-distill

# Create the virtual environment once and (re)install when the requirements change. requirements-dev.txt
# is requirements.txt plus what the tests, the table figures and `make lint` use (scipy, matplotlib, ruff).
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# make test: every test but the `long` ones, on two pytest-xdist workers of one thread each (most of the slow
# tier is process start-up, ~6 s of imports per process, which one core cannot overlap); a test file stays on
# one worker, so its module fixtures are built once. make test-fast (the tests that neither start a process nor
# train) the same way: 35 s instead of 54 s on one process (AMD EPYC family 26, docs/results/LOG.md).
# make test-long: the minute-plus end-to-end tests (pyproject.toml's markers), the same way. Both together are the whole suite.
TEST_WORKERS ?= 2

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not long" -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-long: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m long -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .

# The CPU benchmark (8-40 min on 2 cores from a fresh clone, by CPU: README, Quick start): the CPU tier of the
# generated dataset, the teacher once, four student rows x 3 seeds (bfloat16 training where the CPU has bfloat16
# units; DEMO_BF16=0 for float32), evaluation, table with paired differences, figure.
demo: $(STAMP)
	SCALE=demo PYTHON=$(abspath $(PY)) bash scripts/synthetic/table.sh

# The C++ (libtorch) predictor of deploy/cpp/README.md, compiled against the libtorch inside the pip torch wheel
# (CMake's find_package(Torch) stops on a CUDA wheel without the CUDA toolkit, so no CMake). Images: Debian's
# libstb-dev (stb_image, stb_image_write), or STB_INCLUDE=<folder with stb_image.h and stb_image_write.h>.
STB_INCLUDE ?= /usr/include/stb
DEPLOY_BIN ?= deploy/cpp/build/segkd_predict
CXX ?= g++

deploy: $(STAMP)
	@test -f $(STB_INCLUDE)/stb_image.h -a -f $(STB_INCLUDE)/stb_image_write.h || \
		{ echo "error: stb_image.h/stb_image_write.h not in $(STB_INCLUDE): apt-get install libstb-dev or set STB_INCLUDE" >&2; exit 2; }
	@mkdir -p $(dir $(DEPLOY_BIN))
	TORCH=$$($(PY) -c "import os, torch; print(os.path.dirname(torch.__file__))") && \
	ABI=$$($(PY) -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))") && \
	$(CXX) -std=c++20 -O2 -D_GLIBCXX_USE_CXX11_ABI=$$ABI deploy/cpp/segkd_predict.cpp -o $(DEPLOY_BIN) \
		-isystem $$TORCH/include -isystem $$TORCH/include/torch/csrc/api/include -isystem $(STB_INCLUDE) \
		-L$$TORCH/lib -Wl,-rpath,$$TORCH/lib -ltorch -ltorch_cpu -lc10
	@echo "built $(DEPLOY_BIN)"

# segkd_distill (deploy/cpp/README.md, "Distillation step in C++"): the same compiler line; only stb_image.h needed.
DISTILL_BIN ?= deploy/cpp/build/segkd_distill

deploy-distill: $(STAMP)
	@test -f $(STB_INCLUDE)/stb_image.h || \
		{ echo "error: stb_image.h not in $(STB_INCLUDE): apt-get install libstb-dev or set STB_INCLUDE" >&2; exit 2; }
	@mkdir -p $(dir $(DISTILL_BIN))
	TORCH=$$($(PY) -c "import os, torch; print(os.path.dirname(torch.__file__))") && \
	ABI=$$($(PY) -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))") && \
	$(CXX) -std=c++20 -O2 -D_GLIBCXX_USE_CXX11_ABI=$$ABI deploy/cpp/segkd_distill.cpp -o $(DISTILL_BIN) \
		-isystem $$TORCH/include -isystem $$TORCH/include/torch/csrc/api/include -isystem $(STB_INCLUDE) \
		-L$$TORCH/lib -Wl,-rpath,$$TORCH/lib -ltorch -ltorch_cpu -lc10
	@echo "built $(DISTILL_BIN)"
