# moec: the two set-up commands are `make demo` and `make test`; each installs what is missing first.
#   make demo    install deps, build, run the demo (prints what it does)
#   make test    install deps, build, run every test through ctest
#                (SANITIZE=address,undefined or SANITIZE=thread: all of it sanitized, in build-<sanitizers>/)
#   make build   configure + build only (tools land in build/bin/)
#   make bench   moec vs ONNX Runtime vs the roofline (bench/run.py; BENCH_ARGS=--quick for ~1 minute)
#   make bench-large  compile a 21 GB model under a 4 GB memory cap, load it, time its first steps (bench/large_model.py)
#   make fuzz    run the fuzzers (ONNX importer, artifact loader, moert_run inputs) FUZZ_SECONDS each (default 600)
#   make docs    re-render the ODS reference pages into docs/
#   make clean   remove the build tree
# SANITIZE=address,undefined | thread: moec, libmoert, the tests and the kernels moec generates are built with
# clang's sanitizers in their own build tree (cmake/MoecSanitize.cmake), and the tests run under them.
SANITIZE   ?=
comma := ,
ifneq ($(SANITIZE),)
BUILD      ?= build-$(subst $(comma),-,$(SANITIZE))
endif
BUILD      ?= build
BUILD_TYPE ?= Release
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=
CTEST_ARGS ?=

CC_19  := $(shell command -v clang-19 2>/dev/null)
CXX_19 := $(shell command -v clang++-19 2>/dev/null)

BENCH_ARGS ?=
FUZZ_SECONDS ?= 600
BENCH_LARGE_ARGS ?=

.PHONY: all deps configure build test demo bench bench-large fuzz docs clean help
all: build

help:
	@sed -n '2,10p' Makefile | sed 's/^# \{0,1\}//'

deps:
	@echo "==> checking dependencies (scripts/install-deps.sh)"
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	@echo "==> configuring $(BUILD)/ ($(BUILD_TYPE), Ninja, clang-19)"
	cmake -G Ninja -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DCMAKE_C_COMPILER=$(or $(CC_19),clang-19) -DCMAKE_CXX_COMPILER=$(or $(CXX_19),clang++-19) \
	  -DCMAKE_EXE_LINKER_FLAGS=-fuse-ld=lld -DCMAKE_SHARED_LINKER_FLAGS=-fuse-ld=lld \
	  -DCMAKE_MODULE_LINKER_FLAGS=-fuse-ld=lld $(if $(SANITIZE),-DMOEC_SANITIZE=$(SANITIZE)) $(CMAKE_ARGS)

configure: deps $(BUILD)/build.ninja

build: configure
	@echo "==> building (ninja -j$(JOBS))"
	cmake --build $(BUILD) -j $(JOBS)

test: build
	@echo "==> running tests (ctest)"
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS) $(CTEST_ARGS)

demo: build
	@MOEC_BUILD=$(BUILD) bash scripts/demo.sh

bench: build
	@python3 -m pip install -q -r bench/requirements.txt 2>/dev/null || python3 -m pip install -q --break-system-packages -r bench/requirements.txt
	python3 bench/run.py --build $(BUILD) $(BENCH_ARGS)

# Not part of `make bench` or CI: it writes 21 GB of model and up to 10.5 GB of artifact (about 5 minutes here).
bench-large: build
	python3 bench/large_model.py --build $(BUILD) $(BENCH_LARGE_ARGS)

# Long fuzzing runs (ctest runs each for 15-20 s). Corpora grow in $(BUILD)/tests/fuzz/*/; a crash stops its
# fuzzer and leaves the input in .../artifacts/ (add it to tests/fuzz/regressions/ with the fix).
fuzz: build
	bash tests/fuzz/run-fuzzer.sh $(BUILD)/tests/fuzz/onnx-import-fuzzer $(BUILD)/tests/fuzz/work $(FUZZ_SECONDS)
	bash tests/fuzz/run-loader-fuzzer.sh $(BUILD)/tests/fuzz/moert-load-fuzzer $(BUILD)/bin/moec \
	  $(BUILD)/tests/fuzz/loader-work $(FUZZ_SECONDS)
	bash tests/fuzz/run-run-fuzzer.sh $(BUILD)/tests/fuzz/moert-run-fuzzer $(BUILD)/bin/moec \
	  $(BUILD)/tests/fuzz/run-work $(FUZZ_SECONDS)
	bash tests/fuzz/run-tokenizer-fuzzer.sh $(BUILD)/tests/fuzz/tokenizer-fuzzer $(BUILD)/tests/fuzz/tokenizer-work \
	  $(FUZZ_SECONDS)

docs: build
	python3 scripts/sync-docs.py --build $(BUILD)

clean:
	rm -rf $(BUILD)
