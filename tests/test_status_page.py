"""The verifier's status page: rendered by a real `flowproof verify` against the real services and
loaded in a real headless browser (chromium), before and after a staged defect; plus the page's
escaping and bounded history, on reports built by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import Settings
from flowproof.verifier.history import History
from flowproof.verifier.model import (
    CHECK_NAMES,
    LAG_OUTBOX,
    LAG_REDIS,
    CheckResult,
    Finding,
    Report,
)
from flowproof.verifier.page import StatusPage, _short, render_html, status_document
from tests.browser import WINDOW, chromium, dump_dom, keep, png_pixel, png_size, screenshot
from tests.test_verify_service import Verifier, verifier
from tests.test_verify_support import AGGREGATETYPE, GROUP, Pipeline, clean_pipeline

# A stream name that would be markup if the page did not escape it.
HOSTILE = '<b id="injected">x</b>'
PASSED_RED_GREEN = {"PASSED": (4, 120, 87), "FAILED": (185, 28, 28)}  # the header's background


async def _status(running: Verifier) -> dict[str, object]:
    code, body = await running.get("/status.json")
    assert code == 200, body
    document: dict[str, object] = json.loads(body)
    return document


async def _wait_for_verdict(running: Verifier, verdict: str) -> dict[str, object]:
    async with asyncio.timeout(60):
        while True:
            document = await _status(running)
            if document["verdict"] == verdict:
                return document
            await asyncio.sleep(0.2)


def _row(dom: str, check: str) -> str:
    found = re.search(rf'<tr id="check-{re.escape(check)}">(.*?)</tr>', dom, re.S)
    assert found, f"no row for {check} in the page"
    return found.group(1)


async def _stage_outbox_defect(pipeline: Pipeline) -> None:
    """An event in the outbox for two minutes that the relay never published: lag.outbox."""
    await pipeline.execute(
        """INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, created_at)
           VALUES ($1, 'agg-stuck', 'orders.OrderPlaced', '{}'::jsonb,
                   clock_timestamp() - interval '2 minutes')""",
        AGGREGATETYPE,
    )


async def _load(url: str, name: str, tmp_path: Path) -> tuple[str, Path]:
    profile = tmp_path / f"chromium-{name}"
    dom = await asyncio.to_thread(dump_dom, url, profile)
    shot = await asyncio.to_thread(screenshot, url, tmp_path / f"status-page-{name}.png", profile)
    keep(shot)
    return dom, shot


def _assert_shows(dom: str, shot: Path, verdict: str) -> None:
    assert f"<title>flowproof status: {verdict}</title>" in dom
    assert f'id="verdict">{verdict}</span>' in dom
    for name in CHECK_NAMES:
        _row(dom, name)
    assert png_size(shot) == WINDOW
    assert png_pixel(shot, 10) == PASSED_RED_GREEN[verdict], f"header colour of {shot}"


@pytest.fixture
async def pipeline(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> Pipeline:
    """A healthy pipeline's traces (every check passes), see tests/test_verify_support.py."""
    return await clean_pipeline(settings, redis_client, kafka_admin)


async def test_the_page_shows_the_checks_in_a_browser_and_a_failing_check_after_a_defect(
    pipeline: Pipeline, settings_env: dict[str, str], tmp_path: Path
) -> None:
    redis_client = pipeline.redis
    hostile = f"{pipeline.settings.stream_prefix}{HOSTILE}"
    await redis_client.xadd(hostile, {"x": "1"})
    await redis_client.xgroup_create(hostile, GROUP, id="$")
    async with verifier(settings_env) as running:
        document = await _wait_for_verdict(running, "PASSED")
        assert [c["status"] for c in document["checks"]] == ["PASS"] * 9  # type: ignore[union-attr]
        dom, shot = await _load(running.url + "/", "passing", tmp_path)
        _assert_shows(dom, shot, "PASSED")
        assert all('class="s PASS"' in _row(dom, name) for name in CHECK_NAMES)
        # Both groups with their lanes; the hostile stream name is text, not markup.
        assert "redis group flowproof</th>" in dom and "kafka group flowproof</th>" in dom
        assert '&lt;b id="injected"&gt;x&lt;/b&gt;' in dom
        assert HOSTILE not in dom

        await _stage_outbox_defect(pipeline)
        document = await _wait_for_verdict(running, "FAILED")
        dom, shot = await _load(running.url + "/", "failing", tmp_path)
        _assert_shows(dom, shot, "FAILED")
        row = _row(dom, LAG_OUTBOX)
        assert 'class="s FAIL"' in row
        assert "1 waiting longer than 60s" in row
        assert 'class="s PASS"' in _row(dom, "components.up")


# --- the page without a browser -------------------------------------------------------------
def _report(lost: int, *, subject: str = "redis group g", text: str = "") -> Report:
    lane = Finding(
        f"{subject} stream s",
        True,
        text or "0 entries behind",
        {"sink": "redis", "group": "g", "source": "s", "partition": None, "behind": 7},
    )
    group = Finding(subject, True, "status OK", {"sink": "redis", "group": "g", "status": "OK"})
    checks = [
        CheckResult(name, True, 0, 0, "events", None, ())
        for name in CHECK_NAMES
        if name not in ("flow.lost", LAG_REDIS)
    ]
    lost_finding = Finding(
        subject, lost == 0, f"{lost} lost", {"sink": "redis", "group": "g", "lost": lost}
    )
    checks.insert(1, CheckResult("flow.lost", lost == 0, lost, 0, "events", 5.0, (lost_finding,)))
    checks.insert(5, CheckResult(LAG_REDIS, True, 7, 0, "entries", 60.0, (lane, group)))
    return Report(tuple(checks), (), dt.datetime.now(dt.UTC), 0.1, 60.0)


def test_evidence_is_escaped_and_no_script_may_run() -> None:
    page = StatusPage(history_size=5, refresh_seconds=2.0)
    page.record(_report(1, text="<script>alert(1)</script> & \"'"))
    html = page.html().body
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;&#x27;" in html
    assert "default-src 'none'" in html  # the page's own Content-Security-Policy
    assert '<meta http-equiv="refresh" content="2">' in html


def test_the_history_keeps_the_newest_evaluations_and_charts_them() -> None:
    history = History(3)
    for lost in (5, 0, 1, 2):
        history.record(_report(lost))
    samples = history.samples
    assert len(samples) == 3
    document = status_document(None, [], samples, history_size=3, refresh_seconds=1.0)
    lost_series = document["history"]["charts"]["lost"]["series"]
    assert lost_series["redis group g lost"] == [0.0, 1.0, 2.0]
    assert lost_series["redis group g late"] == [7.0, 7.0, 7.0]  # entries behind: not reached
    assert document["verdict"] == "PENDING"
    page = render_html(document)
    assert page.count("<svg") == 4  # the verdict strip and three charts
    assert page.count('fill="#dc2626"><title>') == 2  # the two evaluations that lost events
    assert "redis group g late: 7" in page


def test_the_json_and_the_page_carry_the_same_checks_and_lanes() -> None:
    page = StatusPage(history_size=5, refresh_seconds=1.0)
    page.record(_report(2))
    document = json.loads(page.json().body)
    assert document["verdict"] == "FAILED"
    assert [c["name"] for c in document["checks"]] == list(CHECK_NAMES)
    assert document["checks"][1]["status"] == "FAIL"
    assert document["groups"][0]["lanes"][0]["behind"] == 7
    html = page.html().body
    assert '<tr id="check-flow.lost"><td>flow.lost</td><td><span class="s FAIL">' in html


def test_a_missing_chromium_fails_the_test_naming_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install chromium"):
        chromium()


def test_chart_axis_labels_fit_the_margin() -> None:
    labels = [_short(v) for v in (0.05717, 1.0, 42.0, 3325.0, 25_800.0, 1_234_567.0)]
    assert labels == ["0.0572", "1", "42", "3325", "25.8k", "1.23M"]
    assert max(len(label) for label in labels) <= 6
