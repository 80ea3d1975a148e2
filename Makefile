# Two commands matter: `make demo` and `make test`. Both install what they need, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test-bed binaries (Kubernetes, etcd, kwok, helm) are built once into a versioned cache outside the repo.
export SWARM_TESTBED_CACHE ?= $(HOME)/.cache/swarm-learning/testbed

.PHONY: demo test test-unit test-integration test-e2e test-cluster lint testbed browser cluster-up cluster-down bench clean venv sync-crds images wheels chaos fuzz

venv: $(STAMP)
$(STAMP): pyproject.toml
	@echo ">>> Creating the Python environment in $(VENV) (first run downloads torch; later runs reuse it)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip's own chatter goes to a log; it is shown only when the install fails.
	@{ $(PY) -m pip install -q --upgrade pip setuptools wheel && \
	   $(PY) -m pip install -q -e '.[dev,local,ml]'; } > $(VENV)/pip.log 2>&1 || \
	   { tail -n 40 $(VENV)/pip.log; echo "pip install failed (full log: $(VENV)/pip.log)"; exit 1; }
	@touch $(STAMP)
	@echo ">>> Python environment ready"

demo: venv
	@echo ">>> Running the local swarm demo (SN, SL and ML nodes as processes on loopback)"
	$(VENV)/bin/swarmctl run examples/local/digits

testbed:
	@bash tests/testbed/build.sh

# The console's browser test (tests/integration/test_console_browser.py) drives Debian's Chromium headless.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo ">>> Chromium and chromedriver present (for the console's browser test)"; \
	else \
	  echo ">>> Installing chromium and chromium-driver with apt-get (for the console's browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# Most tests wait on processes, sockets and a cluster rather than compute, so they run on TEST_WORKERS
# pytest-xdist workers; the e2e tier is one group on one worker (a machine has one real node).
TEST_WORKERS ?= 3
test: venv testbed images browser lint
	@echo ">>> Running every test (unit, integration with real etcd and processes, cluster with a real control plane, e2e on a real node) on $(TEST_WORKERS) workers"
	$(VENV)/bin/pytest -n $(TEST_WORKERS)

# The e2e tier alone: the built images on the test bed's real node (kubelet, containerd); needs root.
test-e2e: venv testbed images
	$(VENV)/bin/pytest -m e2e

test-unit: venv
	$(VENV)/bin/pytest -m unit

test-integration: venv browser
	$(VENV)/bin/pytest -m integration

# Run the cluster tests against the cluster in $KUBECONFIG (kind, k3d, a real one) instead of the test bed.
test-cluster: venv
	@test -n "$$KUBECONFIG" || { echo "test-cluster needs KUBECONFIG pointing at a cluster"; exit 2; }
	SWARM_TEST_EXISTING_CLUSTER=1 $(VENV)/bin/pytest -m cluster

lint: venv
	@echo ">>> Lint: ruff, mypy, import contracts"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# NODES=real (default): the real node (kubelet, containerd, CNI bridge, CoreDNS, dynamic PVCs; the images
# of `make images` when built). NODES=kwok: only the three simulated kwok nodes; NODES=both: real + kwok.
NODES ?= real
cluster-up: venv testbed
	$(PY) -m tests.testbed up --nodes=$(NODES)

cluster-down: venv
	$(PY) -m tests.testbed down

# Container images (operator, sn, sl, ml) built offline: a debootstrap base, wheels from the venv's versions,
# buildah with no network in the build; cached by a hash of their inputs under $SWARM_IMAGE_CACHE (default
# ~/.cache/swarm-learning/images, with images.json listing the docker-archives). See docs/images.md.
images: venv testbed
	@$(PY) node_images/build/images.py $(IMAGES_ARGS)

# Only the wheelhouse (what an air-gapped site needs besides the base archive).
wheels: venv
	@$(PY) node_images/build/images.py wheels

# A chaos run (tests/chaos/harness.py): one training of the digits example with 3 SN members and 5 sites,
# each on its own network namespace, and CHAOS_FAULTS (default 50) random faults; SEED= to repeat a run.
# `make test` runs a 12-fault form of it (tests/integration/test_chaos.py). Needs root (namespaces).
CHAOS_FAULTS ?= 50
chaos: venv testbed
	$(PY) -m tests.chaos --faults $(CHAOS_FAULTS) $(if $(SEED),--seed $(SEED)) --out runs/chaos $(CHAOS_ARGS)

# Benchmarks (not part of `make test`). Flower lives in its own venv .venv-bench (created once by the
# bench itself, stamp file inside) so its pins never touch .venv. BENCH_ARGS="--quick" or "--only merge".
# A full run merges each part into bench/RESULTS.json/.md and README.md's results block (a --quick run
# only writes bench/results/). Only part operator needs the test bed: `--only` other parts skip building it.
bench: venv
	@case " $(BENCH_ARGS) " in *--only*operator*|*--readme*) ;; *--only*) exit 0 ;; esac; \
	  case " $(BENCH_ARGS) " in *--readme*) ;; *) $(MAKE) --no-print-directory testbed ;; esac
	$(PY) -m bench $(BENCH_ARGS)

# Coverage-guided fuzzing (atheris) of the parsers of other parties' bytes: FUZZ_SECONDS per target, corpus
# and findings under ~/.cache/swarm-learning/fuzz/<target>/; fails on the first finding (input saved in
# crashes/). Not part of `make test`, which runs the Hypothesis fuzz tests in tests/fuzz. See docs/limits.md.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= safetensors channel record cert
fuzz: venv
	@# No pipe on the fuzzer's output: piped, libFuzzer could die before saving the crash input.
	@for t in $(FUZZ_TARGETS); do \
	  $(PY) -m tests.fuzz.atheris_targets $$t --seconds $(FUZZ_SECONDS) || { rc=$$?; \
	    echo "fuzz target $$t: finding (exit $$rc), input saved in $(HOME)/.cache/swarm-learning/fuzz/$$t/crashes/"; exit 1; }; \
	done

# The chart carries copies of crds/ (the one source); a unit test fails when they drift.
sync-crds:
	cp crds/*.yaml charts/swarm-learning/crds/

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .mypy_cache .ruff_cache runs
