"""Prometheus config and alert rules of deploy/prometheus/, checked and unit-tested with promtool.

`promtool test rules` runs deploy/prometheus/tests/*.yml: each alert fires on synthetic series and
stays quiet when it should. The checks here add what promtool cannot know: that every alert is
tested both ways, and that every expression selects series flowproof really exports.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy_promql import promtool, selection_problems

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules"
RULE_TESTS = PROMETHEUS / "tests"

# Alerts that are about one sink and consumer group must say which in their summary.
PER_GROUP_ALERTS = (
    "FlowproofEventsLost",
    "FlowproofLatencyP99High",
    "FlowproofConformanceLow",
    "FlowproofConsumerGroupStalled",
)
# What issue 5 asks the rules to alert on, by the alert that does it.
REQUIRED_ALERTS = (
    "FlowproofVerifierDown",
    "FlowproofPipelineNotReady",
    "FlowproofComponentUnreachable",
    "FlowproofVerifierStale",
    "FlowproofEventsLost",
    "FlowproofOutboxLagHigh",
    "FlowproofRedisGroupLagHigh",
    "FlowproofKafkaConsumerLagHigh",
    "FlowproofLatencyP99High",
    "FlowproofConformanceLow",
    "FlowproofConsumerGroupStalled",
)


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def rule_files() -> list[Path]:
    files = sorted(RULES.glob("*.yml"))
    assert files, f"no rule files in {RULES}"
    return files


def unit_test_files() -> list[Path]:
    files = sorted(RULE_TESTS.glob("*.yml"))
    assert files, f"no promtool unit tests in {RULE_TESTS}"
    return files


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def test_promtool_checks_the_config_and_its_rule_files() -> None:
    output = run_promtool("check", "config", str(CONFIG))
    # The config's rule_files glob must reach the rules, or Prometheus would load none.
    for path in rule_files():
        assert path.name in output, f"prometheus.yml does not load {path.name}:\n{output}"


def test_promtool_checks_the_rules() -> None:
    output = run_promtool("check", "rules", *map(str, rule_files()))
    assert "SUCCESS" in output


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    output = run_promtool("test", "rules", *map(str, unit_test_files()))
    assert "FAILED" not in output


def test_every_required_alert_exists_with_severity_and_annotations() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    missing = [name for name in REQUIRED_ALERTS if name not in rules]
    assert not missing, f"alert rules lack {missing}"
    for name, rule in rules.items():
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
    for name in PER_GROUP_ALERTS:
        summary = rules[name]["annotations"]["summary"]
        assert "$labels.sink" in summary and "$labels.group" in summary, (name, summary)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in unit_test_files():
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../rules/flowproof.rules.yml"], path
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), f"alerts never tested firing: {sorted(names - fired)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"
    assert (fired | quiet) - names == set(), f"tests of no alert: {sorted((fired | quiet) - names)}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expressions_select_only_exported_series(rule: dict[str, Any]) -> None:
    assert selection_problems(rule["expr"]) == [], rule["expr"]


def test_the_jobs_the_alerts_watch_are_scraped() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    flowproof_jobs = {job for job in jobs if job.startswith("flowproof-")}
    assert flowproof_jobs == {
        "flowproof-relay",
        "flowproof-consumer-redis",
        "flowproof-consumer-kafka",
        "flowproof-verifier",
    }
    for rule in alert_rules():
        for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', rule["expr"]):
            if op == "=":
                assert value in jobs, f"{rule['alert']} watches job {value}, which is not scraped"
            else:
                matched = {job for job in jobs if re.fullmatch(value, job)}
                assert matched, f"{rule['alert']}: job=~{value!r} matches no scraped job"
    process_down = next(r for r in alert_rules() if r["alert"] == "FlowproofProcessDown")
    regex = re.search(r'job=~"([^"]*)"', process_down["expr"])
    assert regex is not None
    watched = {job for job in jobs if re.fullmatch(regex.group(1), job)}
    assert watched == flowproof_jobs - {"flowproof-verifier"}
