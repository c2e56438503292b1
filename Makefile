# sms-connector: two commands on a fresh machine.
#   make dev    set up, then run the pipeline on an embedded broker with demo traffic (Ctrl-C stops)
#   make test   set up, then run the whole suite (unit, contract, integration, e2e); integration and
#               e2e run on Apache Kafka (needs Java 17 + Maven: the broker's jars are fetched from
#               Maven Central once), else on the embedded Tansu broker with a notice (CI=true: an error)
# Also: make faults (full fault-injection suite), make bench, make clean.
# Image: make image (Dockerfile, with docker or podman), make image-offline (the same image from
# Debian's packages, no engine or registry; root), make image-dockerfile (the Dockerfile built
# with buildah on a local base, as a check), make image-test, make image-lock.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= 1000
export HYPOTHESIS_STORAGE_DIRECTORY ?= $(CURDIR)/.venv/hypothesis
VERSION      := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE        ?= sms-connector
IMAGE_TAG    ?= $(VERSION)
# The repository URL for the image's source label (a release build sets it).
IMAGE_SOURCE ?= unknown
ENGINE       ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)

.PHONY: install dev test unit integration faults bench soak bench-clients docs helm kafka clean \
        image image-offline image-dockerfile image-test image-lock

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/sms-connector dev --demo $(DEMO)

# The suite includes tests/image, which requires both image builds (1.5-2 min with the cached
# Debian base, plus 2 min of debootstrap without it): they run niced in the background while the
# unit, contract and chart tests run (tests/image/conftest.py; log in build/image/build.log), and
# the image tests wait for them. The directories are listed so those tests come first.
TEST_DIRS := tests/unit tests/contract tests/helm tests/image tests/e2e tests/integration
test: $(STAMP)
	bash scripts/install-prometheus.sh
	IMAGE_BUILD_IN_BACKGROUND=1 IMAGE_TESTS_REQUIRED=1 IMAGE_TAG=$(IMAGE_TAG) $(BIN)/pytest -q $(TEST_DIRS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/contract

integration: $(STAMP)
	bash scripts/install-prometheus.sh
	$(BIN)/pytest -q tests/integration tests/e2e

faults: $(STAMP)
	bash scripts/install-prometheus.sh
	FAULTS=full $(BIN)/pytest -q -s tests/integration/test_faults.py tests/integration/test_crash.py tests/integration/test_retry_topic.py \
		tests/integration/test_frozen_worker.py tests/integration/test_mo_durability.py \
		tests/integration/test_broker_failures.py tests/integration/test_scheduled.py tests/integration/test_inbound_exactly_once.py \
		tests/integration/test_shutdown.py tests/e2e/test_dev_orphans.py

kafka: $(STAMP)
	$(BIN)/python -m connector.devtools.kafka_broker

bench: $(STAMP)
	$(BIN)/sms-connector bench

soak: $(STAMP)
	$(BIN)/sms-connector bench --scenario soak

bench-clients: $(STAMP)
	$(BIN)/python benchmarks/http_clients.py

docs: $(STAMP)
	$(BIN)/python -m connector.devtools.docs
	$(BIN)/python -m connector.devtools.chart

helm: $(STAMP)
	$(BIN)/pytest -q tests/helm

image:
	@test -n "$(ENGINE)" || { echo "make image: no docker or podman here; make image-offline builds the same image without one" >&2; exit 1; }
	$(ENGINE) build -t $(IMAGE):$(IMAGE_TAG) --build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$$(git rev-parse HEAD) --build-arg SOURCE=$(IMAGE_SOURCE) .

image-offline: $(STAMP)
	PYTHON=$(BIN)/python IMAGE_TAG=$(IMAGE_TAG) IMAGE_SOURCE=$(IMAGE_SOURCE) bash container/build-offline.sh

image-dockerfile: $(STAMP)
	IMAGE_TAG=$(IMAGE_TAG) IMAGE_SOURCE=$(IMAGE_SOURCE) bash container/build-dockerfile.sh

image-test: image-offline image-dockerfile
	IMAGE_TESTS_REQUIRED=1 IMAGE_TAG=$(IMAGE_TAG) $(BIN)/pytest -q tests/image

image-lock: $(STAMP)
	$(BIN)/python container/lock.py

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info .sms-connector-dev.json
