# The interface users and CI rely on. `make test` and `make demo` do all the set-up themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK_ENV := .devstack/env
PYTEST_ARGS ?=
STACK_ARGS ?=
ARGS ?=

.PHONY: help install stack-up stack-kafka-cluster stack-down stack-status test faults lint demo clean bench bench-quick soak docs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## virtualenv in .venv with flowproof and the dev tools

stack-up: $(STAMP) ## install and start PostgreSQL, Redis and Kafka on loopback; writes .devstack/env
	@devstack/stack.sh up $(STACK_ARGS)

stack-kafka-cluster: $(STAMP) ## stack-up, and a 3-broker Kafka cluster (DEVSTACK_KAFKA_CLUSTER_BOOTSTRAP_SERVERS)
	@devstack/stack.sh up --kafka-cluster

stack-down: ## stop the services stack-up started, nothing else
	@devstack/stack.sh down

stack-status: ## say what runs where
	@devstack/stack.sh status

test: stack-up ## start the stack, run the whole test suite (the stack stays up for reruns)
	set -a && . ./$(STACK_ENV) && set +a && $(BIN)/pytest $(PYTEST_ARGS)

faults: stack-up ## every fault scenario (tests/faults; `make test` runs the fast ones), then the fault table
	set -a && . ./$(STACK_ENV) && set +a && $(BIN)/pytest -m "" tests/faults $(PYTEST_ARGS)

bench: stack-kafka-cluster ## benchmarks beside the raw limits of this machine (with a 3-broker Kafka): a table and bench/results/latest.json
	set -a && . ./$(STACK_ENV) && set +a && $(BIN)/python -m bench --stop-kafka-cluster $(ARGS)

bench-quick: stack-kafka-cluster ## make bench ARGS=--quick: the same benchmarks, smaller
	set -a && . ./$(STACK_ENV) && set +a && $(BIN)/python -m bench --quick --stop-kafka-cluster $(ARGS)

soak: stack-up ## the whole pipeline 10 min at half the measured maximum: RSS and latency over time (not CI)
	set -a && . ./$(STACK_ENV) && set +a && $(BIN)/python -m bench.soak $(ARGS)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	tools/typecheck

docs: $(STAMP) ## regenerate docs/configuration.md from the settings model (flowproof/core/config.py)
	$(BIN)/python -m flowproof.docs_config > docs/configuration.md

demo: stack-up ## the whole pipeline on local services with a generated workload, then the verdict (ARGS=--prometheus: with alerts)
	set -a && . ./$(STACK_ENV) && set +a && $(BIN)/flowproof demo $(ARGS)

clean: stack-down ## stop the stack and remove .devstack and .venv
	rm -rf .devstack $(VENV)
