# sms-connector: two commands on a fresh machine.
#   make dev    set up, then run the pipeline on an embedded broker with demo traffic (Ctrl-C stops)
#   make test   set up, then run the whole suite (unit, contract, integration, e2e); integration and
#               e2e run on Apache Kafka (needs Java 17 + Maven: the broker's jars are fetched from
#               Maven Central once), else on the embedded Tansu broker with a notice (CI=true: an error)
# Also: make faults (full fault-injection suite), make bench, make clean.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= 1000
export HYPOTHESIS_STORAGE_DIRECTORY ?= $(CURDIR)/.venv/hypothesis

.PHONY: install dev test unit integration faults bench soak bench-clients docs helm kafka clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/sms-connector dev --demo $(DEMO)

test: $(STAMP)
	bash scripts/install-prometheus.sh
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/contract

integration: $(STAMP)
	bash scripts/install-prometheus.sh
	$(BIN)/pytest -q tests/integration tests/e2e

faults: $(STAMP)
	bash scripts/install-prometheus.sh
	FAULTS=full $(BIN)/pytest -q -s tests/integration/test_faults.py tests/integration/test_crash.py tests/integration/test_retry_topic.py \
		tests/integration/test_broker_failures.py

kafka: $(STAMP)
	$(BIN)/python -m connector.kafka_broker

bench: $(STAMP)
	$(BIN)/sms-connector bench

soak: $(STAMP)
	$(BIN)/sms-connector bench --scenario soak

bench-clients: $(STAMP)
	$(BIN)/python benchmarks/http_clients.py

docs: $(STAMP)
	$(BIN)/python -m connector.docs
	$(BIN)/python -m connector.chart

helm: $(STAMP)
	$(BIN)/pytest -q tests/helm

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info .sms-connector-dev.json
