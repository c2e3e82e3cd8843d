"""The verifier's evaluation time over N outbox rows and their receipts, and its peak RSS.

The scratch database is filled by `bench/verify_eval.py`'s generate_series statements (N events
of the last 50 minutes published to both sinks, a receipt per event and sink, a few planted lost,
duplicated and reordered events). Then `flowproof check --json` runs as a subprocess, as a user
would run it: its own `duration_seconds` is the evaluation time; its peak RSS comes from wait4.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from dataclasses import dataclass

from bench.pipeline import load
from bench.procs import run_once
from bench.scratch import Scratch
from bench.verify_eval import fill


@dataclass
class VerifierRun:
    events: int
    receipts: int
    fill_seconds: float
    evaluations: list[float]  # duration_seconds of each `flowproof check`
    wall_seconds: list[float]  # the whole command, start-up included
    peak_rss: int
    exit_codes: list[int]
    load: float


async def verifier_evaluation(scratch: Scratch, events: int, runs: int) -> VerifierRun:
    conn = await scratch.connect()
    try:
        started = time.monotonic()
        with contextlib.redirect_stdout(io.StringIO()):  # fill() prints its own summary
            await fill(conn, events, 1.0, scratch.prefix)
        fill_seconds = time.monotonic() - started
        receipts = await conn.fetchval("SELECT count(*) FROM flowproof_receipts")
    finally:
        await conn.close()
    env = scratch.env(FLOWPROOF_VERIFY_TIMEOUT_SECONDS="600", FLOWPROOF_LOG_LEVEL="error")
    load_before = load()
    evaluations: list[float] = []
    walls: list[float] = []
    codes: list[int] = []
    peak = 0
    for _ in range(runs):
        started = time.monotonic()
        code, out, rss, tail = await asyncio.to_thread(run_once, ["check", "--json"], env, 900.0)
        walls.append(time.monotonic() - started)
        if code not in (0, 1):
            raise RuntimeError(f"flowproof check exited {code}:\n{tail}")
        evaluations.append(float(json.loads(out)["duration_seconds"]))
        codes.append(code)
        peak = max(peak, rss)
    return VerifierRun(
        events=events,
        receipts=receipts,
        fill_seconds=fill_seconds,
        evaluations=evaluations,
        wall_seconds=walls,
        peak_rss=peak,
        exit_codes=codes,
        load=max(load_before, load()),
    )
