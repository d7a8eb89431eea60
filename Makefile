# The README's commands. Each creates its own .venv; nothing depends on what is installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deps-stamp
BUILD_DIR := build/$(shell $(PYTHON) -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
PYTEST_ARGS ?=

.PHONY: all venv build develop demo test bench lint format clean

all: build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# histolytics is installed for its H&E image with nuclei labels only (the model's real-image
# data set): --no-deps keeps its heavy dependency tree out.
HISTOLYTICS := histolytics==0.3.0

$(STAMP): requirements-dev.txt Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps $(HISTOLYTICS)
	touch $@

venv: $(STAMP)

# The test suite runs the CUDA kernels on a host emulator as well (pdl_post._cuda_emulation).
EMULATION := -Ccmake.define.PDL_POST_CUDA_EMULATION=ON

# Non-editable install with a persistent CMake build directory: rebuilds are incremental.
build: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps \
		-Cbuild-dir=$(BUILD_DIR) $(EMULATION) .

# Development: editable install (Python edits are live; rerun after C++ changes).
# flock serialises concurrent rebuilds of the shared build directory.
develop: $(STAMP)
	mkdir -p build
	flock build/.lock $(BIN)/python -m pip install --quiet --no-build-isolation --no-deps \
		-Cbuild-dir=build/dev $(EMULATION) -e .

# Post-processing on a synthetic 1024x2048 scene beside the dense PyTorch implementation, then the
# shipped tiny model end to end (image -> network -> pdl_post -> overlay PNG and PQ).
demo: build
	$(BIN)/python -m pdl_post.demo --out demo-out
	$(BIN)/python -m panoptic_deeplab demo --out demo-out/model

# The whole suite, then a smoke run of the benchmark suite on tiny scenes (keeps it from rotting).
test: build
	PDL_POST_REQUIRE_EMULATION=1 $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider

# The evaluation benchmarks compare against hotcoco and cityscapesScripts (skipped when absent).
bench: build
	$(BIN)/python -m pip install --quiet hotcoco==1.3.0
	$(BIN)/python -m pip install --quiet --no-deps cityscapesscripts==2.3.0 pyquaternion==0.9.9
	$(BIN)/python benchmarks/run.py
	$(BIN)/python -m pytest benchmarks/test_bench_eval.py benchmarks/test_bench_targets.py -q -p no:cacheprovider

CPP_SOURCES := cpp/include/pdl_post/*.h cpp/src/*.cpp cpp/cuda/*.cu cpp/cuda/*.cuh src/*.cpp src/*.h \
	cpp/cuda_emulation/*.cpp cpp/cuda_emulation/*.cu cpp/cuda_emulation/include/*.h cpp/cuda_emulation/include/*/*.h \
	cpp/cuda_emulation/include/cub/*/*.cuh tests/*.cpp

lint: $(STAMP)
	$(BIN)/ruff check python tests benchmarks models cpp/cuda_emulation
	$(BIN)/ruff format --check python tests benchmarks models cpp/cuda_emulation
	$(BIN)/clang-format --dry-run --Werror $(CPP_SOURCES)

format: $(STAMP)
	$(BIN)/ruff format python tests benchmarks models cpp/cuda_emulation
	$(BIN)/clang-format -i $(CPP_SOURCES)

clean:
	rm -rf $(VENV) build dist demo-out .pytest_cache .hypothesis .benchmarks
