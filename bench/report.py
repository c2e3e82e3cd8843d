"""The benchmark's output: one row per figure, printed as a table and written as JSON.

Each row carries the load average of the machine while it was measured (other work on a shared
machine skews every figure) and, where the issue sets one, its target and whether it was met.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.scratch import ROOT, Services

LIBRARIES = (
    "asyncpg",
    "redis",
    "hiredis",
    "aiokafka",
    "fastavro",
    "pydantic",
    "prometheus-client",
    "structlog",
)


@dataclass
class Figure:
    """One measured figure."""

    section: str
    name: str
    value: float
    unit: str
    load: float
    raw: float | None = None  # the raw limit it is compared with
    raw_name: str | None = None
    # e.g. "<= 10" or ">= 20000; ratio >= 0.8" (every part must hold)
    target: str | None = None
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.raw is None or not self.raw:
            return None
        return self.value / self.raw


def meets(figure: Figure) -> bool:
    """Every part of the figure's target: '<= 10', '>= 20000', 'ratio >= 0.8'."""
    assert figure.target is not None
    for part in figure.target.split(";"):
        words = part.split()
        value = figure.value
        if words[0] == "ratio":
            if figure.ratio is None:
                return False
            value, words = figure.ratio, words[1:]
        limit = float(words[1])
        if not (value <= limit if words[0] == "<=" else value >= limit):
            return False
    return True


@dataclass
class Results:
    mode: str
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, figure: Figure) -> Figure:
        if figure.target is not None and not math.isnan(figure.value):
            figure.met = meets(figure)
        self.figures.append(figure)
        return figure

    def to_json(self) -> dict[str, Any]:
        figures = []
        for f in self.figures:
            row = asdict(f)
            row["ratio"] = None if f.ratio is None else round(f.ratio, 3)
            row["value"] = round(f.value, 4) if not math.isnan(f.value) else None
            figures.append(row)
        return {
            "mode": self.mode,
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "machine": self.machine,
            "versions": self.versions,
            "settings": self.settings,
            "figures": figures,
            "details": self.details,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "ms":
        return f"{value:,.1f} {unit}"
    if unit == "s":
        return f"{value:,.2f} {unit}"
    if unit == "MB":
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:,.2f}{unit}"
    return f"{value:,.0f} {unit}"


def render(results: Results) -> str:
    """The table: section, figure, value, raw limit, ratio, target, met, load."""
    header = ("section", "figure", "value", "raw limit", "ratio", "target", "met", "load")
    rows = [header]
    for f in results.figures:
        raw = "" if f.raw is None else f"{_number(f.raw, f.unit)} ({f.raw_name})"
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        met = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append(
            (
                f.section,
                f.name,
                _number(f.value, f.unit),
                raw,
                ratio,
                f.target or "",
                met,
                f"{f.load:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.name}: {f.note}" for f in results.figures if f.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    memory = "unknown"
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def versions(services: Services) -> dict[str, str]:
    found = {"python": platform.python_version(), "python_implementation": sys.implementation.name}
    conn = await asyncpg.connect(services.database_url)
    try:
        found["postgresql_server"] = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        found["postgresql_fsync"] = fsync
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(services.redis_url)
    try:
        info = await client.info("server")
        found["redis_server"] = str(info.get("redis_version"))
    finally:
        await client.aclose()
    libs = sorted((ROOT / ".devstack").glob("kafka-libs-*"))
    found["kafka_server"] = libs[-1].name.removeprefix("kafka-libs-") if libs else "unknown"
    for name in LIBRARIES:
        key = "redis-py" if name == "redis" else name
        try:
            found[key] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[key] = "not installed"
    return found
