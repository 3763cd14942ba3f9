# pynydusd: `make run` mounts the bundled sample image, `make test` runs the suite.
# Both set everything up first on a fresh Debian/Ubuntu machine (as root).

SHELL := /bin/bash
SYS_PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv \
            erofs-utils squashfs-tools docker-registry apache2-utils util-linux curl
PYTEST_ARGS ?=

.PHONY: setup apt test run stop lint fixtures clean

setup: apt $(VENV)/.installed

# Install the Debian packages that are missing (no-op when all are present).
apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml $(wildcard setup.py)
	$(SYS_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check rafs daemon tools tests

clean:
	rm -rf $(VENV) build dist fixtures/build *.egg-info
