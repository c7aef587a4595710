# clconv: the two commands of the README. Each one installs whatever is missing first:
#   make demo   system packages (PoCL, CLBlast, OpenCL headers, Mesa's rusticl) -> .venv -> editable
#               install -> demo
#   make test   the same set-up, then the test suite on every usable OpenCL device (docs/devices.md)
# Other targets: make sanitize (every kernel under Oclgrind), make device-bundle (the files
# tools/device-check.sh carries to a GPU machine), make info, make bench, make tune, make clean.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
APT_PKGS := pocl-opencl-icd libclblast-dev ocl-icd-opencl-dev mesa-opencl-icd
SANITIZE_PKGS := oclgrind
TUNE_PKGS := clblast-utils
STAMP    := $(VENV)/.installed

.PHONY: demo test sanitize device-bundle info bench tune system sanitize-system tune-system venv \
        crosscheck clean

demo: venv
	$(PY) -m clconv demo

# Mesa's rusticl offers its llvmpipe CPU device only when asked: the suite then runs on PoCL (every
# test) and on llvmpipe (the per-device modules, tests/conftest.py's EVERY_DEVICE_MODULES), and on
# any GPU there is. CLCONV_TEST_DEVICES=pocl,llvmpipe,... names the devices instead.
# TEST_WORKERS pytest-xdist processes share the tests: on a fresh machine the suite's time is mostly
# the drivers compiling kernels on the calling thread, so two workers on two cores take 13-21 min
# where one took ~30 (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 2
test: export RUSTICL_ENABLE ?= llvmpipe
test: venv crosscheck
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The tests marked `sanitize` (tests/sanitize/, left out of `make test`): every kernel file in cl/
# on tiny shapes under Oclgrind (invalid accesses, data races, results against tests/reference.py);
# prints the launches checked per file and `sanitize: clean` or `FAILED`. CI runs it after the tests.
# -cl-opt-disable: Oclgrind 21.10 cannot interpret some intrinsics of optimised code (llvm.abs.i32).
OCLGRIND := oclgrind --data-races --check-api --build-options -cl-opt-disable
sanitize: venv sanitize-system
	$(OCLGRIND) $(PY) -m pytest -q -m sanitize tests/sanitize

# The files tools/device-check.sh needs on a GPU machine without network (pyopencl's cp312 wheel,
# Debian's CLBlast and ICD loader unpacked, a pyclblast cp312 wheel): fetched into tools/device-bundle/
# (which ignores itself; carried with the working tree as an ignored path).
device-bundle: venv
	tools/make-device-bundle.sh tools/device-bundle

# Optional: torch for the tests' cross-checks against torch.nn.functional (the numpy float64 oracle is
# the reference either way). A CPU build is asked for by its local version, which only a local wheel
# folder can satisfy, so this never downloads the large CUDA build; `make test TORCH_SPEC=` skips it.
TORCH_SPEC ?= torch==2.13.0+cpu
crosscheck: venv
	@if [ -n "$(TORCH_SPEC)" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
	  $(PY) -m pip install -q "$(TORCH_SPEC)" 2>/dev/null \
	    && echo "installed $(TORCH_SPEC) for the torch cross-checks" \
	    || echo "note: $(TORCH_SPEC) not installable here; the torch cross-checks will be skipped"; \
	fi

info: venv
	$(PY) -m clconv info

# The bench lives in benchmarks/ (shipped beside clconv); BENCH_ARGS adds options, e.g.
# `make bench BENCH_ARGS="--layers resnet18,mobilenet_v2"` (the networks' layers vs torch, fair method).
bench: venv
	$(PY) -m clconv bench $(BENCH_ARGS)

# CLBlast's tuners (clblast_tuner_*) come with Debian's clblast-utils.
tune: venv tune-system
	$(PY) -m clconv tune

# System packages: installed with apt-get when root, otherwise the exact command is printed.
system: PKGS = $(APT_PKGS)
sanitize-system: PKGS = $(SANITIZE_PKGS)
tune-system: PKGS = $(TUNE_PKGS)
system sanitize-system tune-system:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "clconv needs these system packages; run:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml | system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: system $(STAMP)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache tools/device-bundle
