"""A Prometheus on loopback with flowproof's shipped rules, for `flowproof demo --prometheus` and
the alert tests.

It runs Debian's `prometheus` binary with a configuration derived from the shipped one
(deploy/prometheus/prometheus.yml): the same job names, each scraping the address of a local
flowproof process instead of a compose service (jobs without a local process are left out), short
scrape and evaluation intervals, its own storage directory, a free loopback port. The rules are a
copy of deploy/prometheus/rules/*.yml in which every `for:` is shortened (so a defect of a few
seconds shows as a firing alert); nothing else in them changes (tests/test_alerts_prometheus.py
holds the copy to that). Both files are read as text and the configuration is written as JSON
(which YAML includes), so the package needs no YAML library.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from flowproof.core.errors import FlowproofError
from flowproof.core.http import free_port
from flowproof.core.logging import get_logger

log = get_logger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
HOW_TO_INSTALL = (
    "prometheus is missing: install Debian's `prometheus` package "
    "(`sudo apt-get install prometheus`; `make stack-up` installs it when run as root)"
)
READY_TIMEOUT = 30.0

_FOR = re.compile(r"^(?P<indent>\s+)for:\s*\S+\s*$", re.MULTILINE)
_JOB = re.compile(r"^\s*-\s*job_name:\s*[\"']?(?P<name>[\w.-]+)[\"']?\s*$", re.MULTILINE)


class PrometheusError(FlowproofError):
    """The local Prometheus could not be set up or did not start."""


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise PrometheusError(HOW_TO_INSTALL)
    return path


def shorten_for(rules: str, seconds: int) -> str:
    """The rules text with every `for:` duration replaced by `seconds`."""
    return _FOR.sub(lambda m: f"{m['indent']}for: {seconds}s", rules)


def job_names(config: str) -> list[str]:
    """The scrape job names of a Prometheus configuration, in order."""
    return [m["name"] for m in _JOB.finditer(config)]


def derive_config(
    shipped: str,
    targets: Mapping[str, str],
    *,
    rule_files: list[str],
    interval_seconds: int,
) -> dict[str, Any]:
    """The shipped configuration's jobs that have a target in `targets` (job -> host:port),
    scraping those, with `rule_files` and the given scrape and evaluation interval."""
    interval = f"{interval_seconds}s"
    jobs = [name for name in job_names(shipped) if name in targets]
    if not jobs:
        raise PrometheusError(f"no job of the shipped configuration is in {sorted(targets)}")
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [targets[name]]}]} for name in jobs
        ],
    }


class LocalPrometheus:
    """One Prometheus process in `workdir`, scraping `targets` (job name -> host:port)."""

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, str],
        *,
        for_seconds: int = 5,
        interval_seconds: int = 1,
        shipped: Path = SHIPPED,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._targets = {**targets, "prometheus": f"127.0.0.1:{self.port}"}
        self._for_seconds = for_seconds
        self._interval = interval_seconds
        self._shipped = shipped
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def write_files(self) -> Path:
        """The shortened rules and the derived configuration; returns the configuration."""
        config_file = self._shipped / "prometheus.yml"
        rule_sources = sorted((self._shipped / "rules").glob("*.yml"))
        if not config_file.is_file() or not rule_sources:
            raise PrometheusError(
                f"the shipped Prometheus configuration is not at {self._shipped} "
                "(run from a flowproof source checkout)"
            )
        rules_dir = self.workdir / "rules"
        rules_dir.mkdir(parents=True, exist_ok=True)
        for source in rule_sources:
            text = shorten_for(source.read_text(encoding="utf-8"), self._for_seconds)
            (rules_dir / source.name).write_text(text, encoding="utf-8")
        config = derive_config(
            config_file.read_text(encoding="utf-8"),
            self._targets,
            rule_files=[str(rules_dir / "*.yml")],
            interval_seconds=self._interval,
        )
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return path

    async def start(self) -> LocalPrometheus:
        """Start Prometheus and wait until it answers /-/ready."""
        binary = prometheus_binary()
        config = self.write_files()
        self._log = self.log_path.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        await self._wait_ready()
        log.debug("prometheus.started", url=self.url, pid=self._process.pid)
        return self

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is not None and self._process.returncode is not None:
                raise PrometheusError(f"prometheus exited; see {self.log_path}")
            try:
                await asyncio.to_thread(self.get, "/-/ready")
                return
            except OSError:
                await asyncio.sleep(0.2)
        raise PrometheusError(
            f"prometheus not ready within {READY_TIMEOUT:g}s; see {self.log_path}"
        )

    def alerts_page(self) -> str:
        """The URL of the web UI's alerts page: Debian's build serves only the classic UI."""
        try:
            self.get("/alerts")
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"{self.url}/classic/alerts"
        return f"{self.url}/alerts"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant PromQL query (blocking)."""
        body = json.loads(self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        if body.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def get(self, path: str) -> str:
        """GET one path of its HTTP API (blocking)."""
        with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310 - loopback
            return str(response.read().decode())

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 15)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> LocalPrometheus:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
