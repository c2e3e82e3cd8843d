"""`flowproof demo --prometheus` end to end, shortened: real processes, a frozen consumer, a
Prometheus scraping them, a passing verdict."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_runs_the_pipeline_shows_the_defect_and_passes(settings_env: dict[str, str]) -> None:
    demo = ["demo", "--seconds", "30", "--rate", "100", "--prometheus"]
    result = subprocess.run(
        [sys.executable, "-m", "flowproof", *demo],
        env=settings_env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    for component in ("relay", "consumer-redis", "consumer-kafka", "verifier"):
        assert f"  {component}" in result.stderr
    assert "  status page     http://127.0.0.1:" in result.stderr
    assert re.search(r"  prometheus      http://127\.0\.0\.1:\d+/(classic/)?alerts", result.stderr)
    # The derived configuration scraped every process (and Prometheus itself) to the end.
    assert "prometheus: 5 of 5 targets up; alerts that fired during the demo: " in result.stderr
    assert "defect: Kafka consumer frozen (SIGSTOP)" in result.stderr
    assert "defect removed: Kafka consumer resumed (SIGCONT)" in result.stderr
    assert "every event reached both sinks and every check passes" in result.stderr
    assert "PASSED: 9 of 9 checks passed" in result.stdout
    # The verdict judged real events, not an empty window.
    assert "0 lost of 0 " not in result.stdout
