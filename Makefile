# Set-up and everyday commands of rethink-d2. Every target creates what it needs (.venv at the
# repository root) and is a no-op when it is already there.
#
#   make demo      train the quickstart model from scratch on the built-in shapes dataset
#   make test      run the test suite
#   make setup     only create .venv
#
# Versions: every install step uses `pip install -c constraints.txt` (the pins docker/Dockerfile
# uses too); editing constraints.txt makes `make setup` run the installs again.
#
# Detectron2 source: the default is the PyPI wheel `sal-detectron2` (Detectron2's main branch,
# tagged for CPython 3.10; its pure-Python code runs on 3.10+, its compiled ops are not used).
# With internet and CUDA, build upstream Detectron2 instead, e.g.
#   make setup DETECTRON2_SOURCE='git+https://github.com/facebookresearch/detectron2.git@<commit>'
#   make setup DETECTRON2_SOURCE=/path/to/detectron2-checkout

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(PIP) install -c $(CONSTRAINTS)
DETECTRON2_WHEEL := sal-detectron2
DETECTRON2_SOURCE ?= $(DETECTRON2_WHEEL)
D2_DEPS := fvcore iopath pycocotools 'omegaconf>=2.1,<2.4' 'hydra-core>=1.1' yacs termcolor \
	tabulate cloudpickle tqdm tensorboard matplotlib Pillow packaging 'setuptools<81' wheel \
	shapely faster-coco-eval opencv-python-headless
# Test processes (pytest-xdist; a test file stays in one process). Many tests wait on a
# single-threaded subprocess, so two processes use both cores of a 2-core machine.
TEST_WORKERS ?= 2
DEMO_CONFIG := configs/quickstart/scratch_R18_GN_shapes.yaml
DEMO_OUTPUT := output/demo
STAMP := $(VENV)/.stamp

.PHONY: setup demo test clean-venv
.DEFAULT_GOAL := setup

setup: $(STAMP)-package

$(STAMP)-python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "rethink-d2 needs Python >= 3.10, found " + sys.version.split()[0]' \
		|| { echo "ERROR: set PYTHON=python3.10 (or newer) and run make again" >&2; exit 1; }
	@echo "==> creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV) || { echo "ERROR: could not create $(VENV) with $(PYTHON) -m venv (on Debian: apt-get install python3-venv)" >&2; exit 1; }
	@touch $@

$(STAMP)-torch: $(STAMP)-python $(CONSTRAINTS)
	@echo "==> installing torch and torchvision, versions of $(CONSTRAINTS) (several GB, takes minutes)"
	@$(PIP_INSTALL) -q torch torchvision \
		|| { echo "ERROR: installing torch and torchvision (pinned in $(CONSTRAINTS)) failed (see pip output above)" >&2; exit 1; }
	@touch $@

$(STAMP)-deps: $(STAMP)-torch $(CONSTRAINTS)
	@echo "==> installing Detectron2's dependencies and test tools"
	@$(PIP_INSTALL) -q $(D2_DEPS) 'pytest>=7' pytest-timeout pytest-xdist \
		|| { echo "ERROR: installing Detectron2's dependencies failed (see pip output above)" >&2; exit 1; }
	@touch $@

$(STAMP)-detectron2: $(STAMP)-deps $(CONSTRAINTS)
	@echo "==> installing Detectron2 from $(DETECTRON2_SOURCE)"
	@if [ "$(DETECTRON2_SOURCE)" = "$(DETECTRON2_WHEEL)" ]; then \
		tmp=$$(mktemp -d) && \
		$(PIP_INSTALL) -q --no-deps --target "$$tmp" --python-version 3.10 --only-binary=:all: $(DETECTRON2_WHEEL) \
		&& site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
		&& rm -rf "$$site/detectron2" "$$site"/sal_detectron2-*.dist-info \
		&& cp -r "$$tmp/detectron2" "$$tmp"/sal_detectron2-*.dist-info "$$site/" \
		&& rm -rf "$$tmp" \
		|| { echo "ERROR: installing Detectron2 from $(DETECTRON2_WHEEL) failed (see pip output above)" >&2; exit 1; }; \
	else \
		$(PIP_INSTALL) --no-build-isolation "$(DETECTRON2_SOURCE)" \
		|| { echo "ERROR: building Detectron2 from $(DETECTRON2_SOURCE) failed (needs a C++ compiler; CUDA ops need nvcc)" >&2; exit 1; }; \
	fi
	@$(PY) -W ignore -c 'import detectron2.modeling' \
		|| { echo "ERROR: Detectron2 is installed but does not import (see the error above)" >&2; exit 1; }
	@touch $@

$(STAMP)-package: $(STAMP)-detectron2 setup.py
	@echo "==> installing rethink-d2 (editable)"
	@$(PIP_INSTALL) -q --no-deps --no-build-isolation -e . \
		|| { echo "ERROR: installing rethink-d2 in editable mode failed (see pip output above)" >&2; exit 1; }
	@touch $@

demo: $(STAMP)-package
	$(PY) tools/train_net.py --config $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUTPUT)
	$(PY) tools/predict.py --config $(DEMO_OUTPUT)/config.yaml --input rethink_shapes_val --limit 8 --scale 3 \
		--output $(DEMO_OUTPUT)/predictions

test: $(STAMP)-package
	$(PY) -m pytest tests -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
