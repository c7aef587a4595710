# clconv: the two commands of the README. Each one installs whatever is missing first:
#   make demo   system packages (PoCL, CLBlast, OpenCL headers) -> .venv -> editable install -> demo
#   make test   the same set-up, then the test suite
# Other targets: make info, make bench, make tune, make clean.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
APT_PKGS := pocl-opencl-icd libclblast-dev ocl-icd-opencl-dev
STAMP    := $(VENV)/.installed

.PHONY: demo test info bench tune system venv crosscheck clean

demo: venv
	$(PY) -m clconv demo

test: venv crosscheck
	$(PY) -m pytest -q

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

bench: venv
	$(PY) -m clconv bench

tune: venv
	$(PY) -m clconv tune

# System packages: installed with apt-get when root, otherwise the exact command is printed.
system:
	@missing=""; for p in $(APT_PKGS); do \
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
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
