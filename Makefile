# pynydusd: `make run` mounts the bundled sample image, `make test` runs the suite.
# Both set everything up first on a fresh Debian/Ubuntu machine (as root).

SHELL := /bin/bash
SYS_PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PKGS := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv \
            erofs-utils squashfs-tools docker-registry apache2-utils util-linux curl
PYTEST_ARGS ?=

.PHONY: setup apt test run stop lint fixtures clean dropin bench-lookup fuzz sanitize bench bench-quick bench-setup

setup: apt $(VENV)/.installed

# Install the Debian packages that are missing (no-op when all are present).
apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml setup.py rafs/_speedups.c
	$(SYS_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(VENV)/bin/ruff check rafs daemon tools tests fixtures
	$(PY) -c 'import rafs.chunkmap as c; print("chunk lookup:", c.IMPLEMENTATION)'
	$(PY) -m pytest $(PYTEST_ARGS)
	@echo "== again with the pure-Python twins of the C hot path (PYNYDUSD_PUREPYTHON=1); not again:"
	@echo "   the C-vs-Python property tests (they run both either way) and the 60 s load test"
	PYNYDUSD_PUREPYTHON=1 $(PY) -m pytest -k "not twins_agree" $(PYTEST_ARGS) tests \
		--deselect tests/mounted/test_crash_and_load.py::test_32_readers_over_a_slow_server
	@echo "== a bounded fuzz run of the RAFS readers (make fuzz RUNS=1000000 for a long one)"
	$(PY) -m tools.fuzz --seconds $(FUZZ_SECONDS) --corpus .fuzz/corpus --artifacts .fuzz/findings
	@echo "== the C hot path built with AddressSanitizer and UBSan, under its property and hostile-image tests"
	tools/sanitize.sh

# the C hot path under AddressSanitizer and UndefinedBehaviorSanitizer (part of `make test`)
sanitize: setup
	tools/sanitize.sh

FUZZ_SECONDS ?= 20
RUNS ?= 1000000
fuzz: setup
	$(PY) -m tools.fuzz --runs $(RUNS) --corpus .fuzz/corpus --artifacts .fuzz/findings

lint: setup
	$(VENV)/bin/ruff check rafs daemon tools tests fixtures

clean:
	rm -rf $(VENV) build dist fixtures/build *.egg-info .sanitize

# ---- sample image, demo mount, drop-in ------------------------------------------------------
SAMPLE := fixtures/build/sample-v6
RUN_DIR := .run
RUN_PORT ?= 18000

# the sample source tree (every entry type) and its images: v6/zstd (default) and v5/lz4_block
fixtures: fixtures/build/sample-v6/bootstrap fixtures/build/sample-v5/bootstrap

fixtures/build/sample-src/README.txt: fixtures/make_sample_tree.py $(VENV)/.installed
	$(PY) fixtures/make_sample_tree.py fixtures/build/sample-src

fixtures/build/sample-v%/bootstrap: fixtures/build/sample-src/README.txt $(wildcard rafs/writer/*.py)
	rm -rf fixtures/build/sample-v$*
	$(VENV)/bin/pynydus-image create --fs-version $* \
	    --compressor $(if $(filter 5,$*),lz4_block,zstd) --chunk-size 0x10000 \
	    --blob-dir fixtures/build/sample-v$*/blobs --bootstrap $@ fixtures/build/sample-src

run: setup fixtures
	@$(MAKE) -s stop >/dev/null 2>&1 || true
	@mkdir -p $(RUN_DIR) mnt
	@$(VENV)/bin/pynydus-blob-server --blobsdir $(SAMPLE)/blobs --address 127.0.0.1 \
	    --port $(RUN_PORT) -v > /dev/null 2> $(RUN_DIR)/blob-server.log & echo $$! > $(RUN_DIR)/blob-server.pid
	@sleep 0.3
	@$(VENV)/bin/pynydusd --bootstrap $(SAMPLE)/bootstrap \
	    --backend http://127.0.0.1:$(RUN_PORT)/sample --cache-dir $(RUN_DIR)/cache --no-prefetch \
	    --apisock $(RUN_DIR)/api.sock --log-level debug mnt > /dev/null 2> $(RUN_DIR)/pynydusd.log & \
	    echo $$! > $(RUN_DIR)/pynydusd.pid
	@for i in $$(seq 50); do mountpoint -q mnt && break; sleep 0.1; done
	@mountpoint -q mnt || { cat $(RUN_DIR)/pynydusd.log; exit 1; }
	@echo "The sample image is mounted at ./mnt (served lazily from pynydus-blob-server on 127.0.0.1:$(RUN_PORT))."
	@echo "  ls -la mnt; cat mnt/README.txt; md5sum mnt/data/*"
	@echo "  tail -f $(RUN_DIR)/pynydusd.log      # one line per chunk range pulled from the server"
	@echo "  curl -s --unix-socket $(RUN_DIR)/api.sock http://localhost/api/v1/metrics/backend"
	@echo "Stop with: make stop"

stop:
	@-[ -f $(RUN_DIR)/pynydusd.pid ] && kill $$(cat $(RUN_DIR)/pynydusd.pid) 2>/dev/null; true
	@for i in $$(seq 30); do mountpoint -q mnt || break; sleep 0.1; done
	@-mountpoint -q mnt && umount -l mnt; true
	@-[ -f $(RUN_DIR)/blob-server.pid ] && kill $$(cat $(RUN_DIR)/blob-server.pid) 2>/dev/null; true
	@rm -f $(RUN_DIR)/*.pid
	@echo "stopped"

bench-lookup: setup
	$(PY) tools/bench/lookup.py

# side by side with squashfuse_ll, ratarmount, kernel EROFS, bindfs and a plain directory
BENCH_APT := squashfuse bindfs squashfs-tools erofs-utils docker-registry curl
bench-setup: setup
	@missing=""; for p in $(BENCH_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(PIP) install -q -e '.[bench]'
	$(PY) tools/dropin.py --out dist/nydusd

bench: bench-setup
	$(PY) -m tools.bench.compare --profile full

bench-quick: bench-setup
	$(PY) -m tools.bench.compare --profile quick --out /tmp/pynydusd-bench-quick

dropin: setup
	$(PY) tools/dropin.py --out dist/nydusd
