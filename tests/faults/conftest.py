"""Fixtures of the fault scenarios, and the fault table printed at the end of the run.

The scenarios marked `faults_full` (the slow ones) run only with `make faults`; `make test` runs
the others. Every scenario appends its row to `results.RESULTS`, whatever its outcome, and the
table is printed in pytest's terminal summary and written to `tests/faults/results/latest.md`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import ENV_PREFIX
from tests.conftest import Services
from tests.faults.results import RESULTS, render, write_latest
from tests.faults.scenario import Endpoints, Plan, Run

RunFactory = Callable[..., Run]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    path = write_latest(RESULTS)
    terminalreporter.section("flowproof fault table")
    terminalreporter.write_line(render(RESULTS))
    terminalreporter.write_line(f"(written to {path})")


@pytest.fixture
def base_env() -> dict[str, str]:
    """The environment of the scenario's processes before flowproof's settings are added."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}


@pytest.fixture
def shared_endpoints(services: Services, database_url: str) -> Endpoints:
    """This test's database and the shared Redis and Kafka, all used directly."""
    return Endpoints(
        database_url=database_url,
        redis_url=services.redis_url,
        kafka_bootstrap=services.kafka_bootstrap_servers,
    )


@pytest.fixture
def make_run(
    base_env: dict[str, str],
    name_prefix: str,
    tmp_path: Path,
    redis_client: aioredis.Redis,  # deletes this test's streams afterwards
    kafka_admin: AIOKafkaAdminClient,  # deletes this test's topics afterwards
) -> Iterator[RunFactory]:
    """Build the Run of a Plan on given endpoints."""

    def build(plan: Plan, endpoints: Endpoints) -> Run:
        return Run(plan, endpoints, tmp_path, prefix=name_prefix, base_env=base_env)

    yield build
