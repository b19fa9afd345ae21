# Two commands matter: `make run` (the whole local system) and `make test` (the whole suite).
# Every target installs what it needs first, idempotently.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
KAFKA := deploy/kafka/kafka.sh

.PHONY: help venv kafka-jars kafka-up kafka-down prometheus run test test-unit lint bench clean fuzz

help:
	@echo "make run    start a local Kafka broker, the simulator, the updater and the query API"
	@echo "make test   run the whole test suite against a throwaway broker"
	@echo "make kafka-up / kafka-down / lint / bench / clean"

venv:
	@scripts/bootstrap.sh

kafka-jars: venv
	@$(KAFKA) fetch

prometheus:
	@scripts/ensure-prometheus.sh

kafka-up: kafka-jars
	@$(KAFKA) start

kafka-down:
	@$(KAFKA) stop

run: kafka-jars prometheus
	@$(BIN)/recsim-stream up

test: kafka-jars prometheus
	@echo "==> running the test suite (unit, property, integration: real Kafka, Ray, FAISS, Prometheus)"
	@$(BIN)/python -m pytest -q -p no:cacheprovider

test-unit: venv
	@$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/property

lint: venv
	@$(BIN)/ruff check recsim_stream services tests && $(BIN)/ruff format --check recsim_stream services tests

bench: kafka-jars
	@$(BIN)/recsim-stream bench

# Coverage-guided fuzzing (atheris) of every reader of outside input, FUZZ_SECONDS per harness (fuzz/run.sh).
FUZZ_SECONDS ?= 60
fuzz:
	@scripts/bootstrap.sh --fuzz
	@FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

clean:
	@$(KAFKA) stop >/dev/null 2>&1 || true
	rm -rf var .pytest_cache
