"""`flowproof check` and `flowproof smoke` as users run them: a real process, its stdout (table
or exactly one JSON document), the JUnit file, and the exit code 0, 1 or 2."""

from __future__ import annotations

import asyncio
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import Settings
from flowproof.verifier.model import CHECK_NAMES, FLOW_LOST
from tests.test_verify_support import clean_pipeline, closed_port

FLOWPROOF = [sys.executable, "-m", "flowproof"]


async def flowproof(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run `flowproof ARGS`; return (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *FLOWPROOF,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {case.attrib["name"]: case for case in root.iter("testcase")}


async def test_check_passes_a_clean_pipeline_with_json_and_junit(
    settings: Settings,
    settings_env: dict[str, str],
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:
    await clean_pipeline(settings, redis_client, kafka_admin)
    junit = tmp_path / "check.xml"
    code, out, err = await flowproof(settings_env, "check", "--json", "--junit-xml", str(junit))
    assert code == 0, err
    document = json.loads(out)  # exactly one JSON document: anything else would not parse
    assert document["passed"] is True
    assert [c["name"] for c in document["checks"]] == list(CHECK_NAMES)
    for check in document["checks"]:
        assert set(check) >= {"name", "passed", "value", "threshold", "detail"}
        assert check["passed"] is True
    cases = junit_cases(junit)
    assert list(cases) == list(CHECK_NAMES)
    assert not [c for c in cases.values() if c.find("failure") is not None]


async def test_check_exits_1_and_names_the_sink_and_group_of_a_lost_event(
    settings: Settings,
    settings_env: dict[str, str],
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    await pipeline.execute(
        "DELETE FROM flowproof_receipts WHERE event_id = $1 AND sink = 'kafka'",
        pipeline.event(2).id,
    )
    code, table, _ = await flowproof(settings_env, "check")
    assert code == 1
    [row] = [line for line in table.splitlines() if line.startswith(FLOW_LOST)]
    assert "FAIL" in row
    assert "kafka group flowproof: 1 lost" in table
    assert "failed: flow.lost" in table

    junit = tmp_path / "check.xml"
    code, out, _ = await flowproof(settings_env, "check", "--json", "--junit-xml", str(junit))
    assert code == 1
    document = json.loads(out)
    assert document["passed"] is False
    failed = {c["name"]: c for c in document["checks"] if not c["passed"]}
    assert list(failed) == [FLOW_LOST]
    assert failed[FLOW_LOST]["value"] == 1
    assert failed[FLOW_LOST]["threshold"] == 0
    assert "kafka group flowproof" in failed[FLOW_LOST]["detail"]
    cases = junit_cases(junit)
    failures = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failures == {FLOW_LOST}


async def test_check_exits_2_naming_kafka_when_it_is_unreachable(
    settings_env: dict[str, str],
) -> None:
    env = {**settings_env, "FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}
    code, out, err = await flowproof(env, "check", "--json")
    assert code == 2
    assert "flowproof: kafka is unreachable" in err
    document = json.loads(out)  # the report is still printed, with the evidence
    assert document["components"]["kafka"]["up"] is False
    assert document["components"]["redis"]["up"] is True


async def test_check_exits_2_naming_redis_when_it_is_unreachable(
    settings_env: dict[str, str],
) -> None:
    env = {**settings_env, "FLOWPROOF_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    code, _, err = await flowproof(env, "check")
    assert code == 2
    assert "flowproof: redis is unreachable" in err


async def test_smoke_exits_2_naming_the_unreachable_component(
    settings_env: dict[str, str],
) -> None:
    env = {**settings_env, "FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}
    code, out, err = await flowproof(env, "smoke", "--json", "--timeout", "5")
    assert code == 2
    assert "flowproof: kafka is unreachable" in err
    assert json.loads(out)["passed"] is False


async def test_a_wrong_verifier_setting_exits_2_naming_the_variable(
    settings_env: dict[str, str],
) -> None:
    env = {**settings_env, "FLOWPROOF_VERIFY_GROUPS": "rabbit:flowproof"}
    code, out, err = await flowproof(env, "check")
    assert code == 2
    assert "FLOWPROOF_VERIFY_GROUPS" in err
    assert out == ""
    env = {**settings_env, "FLOWPROOF_SINKS": "redis", "FLOWPROOF_VERIFY_GROUPS": "kafka:x"}
    code, _, err = await flowproof(env, "check")
    assert code == 2
    assert "FLOWPROOF_SINKS does not enable kafka" in err
