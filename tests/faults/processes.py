"""The `flowproof` processes of a fault scenario: started, killed, frozen, stopped, accounted for.

Every process a scenario starts carries the environment variable RUN_MARKER with the scenario's
run id; `stray_processes(run_id)` finds, through /proc, any process still carrying it (a child
that outlived its parent included), so the end of a scenario can prove nothing was left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Not FLOWPROOF_*: those are settings, and flowproof refuses an unknown one.
RUN_MARKER = "FAULTS_RUN_ID"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FlowproofProcess:
    """One `python -m flowproof ...` child with its log file."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    ready_event: str
    process: asyncio.subprocess.Process | None = None
    frozen: bool = False
    wanted: bool = False  # it should be running: started and not killed since
    kills: int = 0
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start (or start again after a kill); the log file is appended to."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            log.write(f"=== start {' '.join(self.args)}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "flowproof",
                *self.args,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        self.frozen = False
        self.wanted = True
        self.starts += 1

    def send(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def kill(self) -> None:
        """SIGKILL and reap: a crash, nothing flushed, no goodbye."""
        self.send(signal.SIGKILL)
        self.wanted = False
        await self._reap()
        self.kills += 1
        self.frozen = False

    def freeze(self) -> None:
        self.send(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.send(signal.SIGCONT)
        self.frozen = False

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (after SIGCONT if frozen), SIGKILL after `grace` seconds; the exit code (-9
        when it had to be killed), None when it was not running."""
        if self.process is None or self.process.returncode is not None:
            return None
        if self.frozen:
            self.thaw()
        self.wanted = False
        self.send(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            await self.kill()
            return -int(signal.SIGKILL)
        return self.process.returncode

    async def _reap(self) -> None:
        if self.process is not None:
            await self.process.wait()

    async def started(self, within: float = 30.0) -> None:
        """Wait until this start of the process logged its `ready_event` (`relay.started`, ...):
        a signal before that would meet Python's default handlers, not flowproof's."""
        event = self.ready_event
        deadline = asyncio.get_running_loop().time() + within
        while len(self.log_events(event)) < self.starts:
            if not self.running:
                raise AssertionError(f"{self.name} exited before {event}:\n{self.log_tail()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.name} did not log {event} within {within:.0f} s")
            await asyncio.sleep(0.05)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log entries named `event` in this process's log (every start of it)."""
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("{"):
                continue  # a plain line of a library (aiokafka) or the start banner
            try:
                entry: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if entry.get("event") == event:
                found.append(entry)
        return found

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc.strerror})"
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """The processes of one scenario, by name."""

    def __init__(self, run_id: str, env: dict[str, str], log_dir: Path) -> None:
        self.run_id = run_id
        self.env = {**env, RUN_MARKER: run_id}
        self.log_dir = log_dir
        self.by_name: dict[str, FlowproofProcess] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def add(
        self, name: str, *args: str, ready_event: str, env: dict[str, str] | None = None
    ) -> FlowproofProcess:
        process = FlowproofProcess(
            name, args, {**self.env, **(env or {})}, self.log_dir / f"{name}.log", ready_event
        )
        self.by_name[name] = process
        return process

    def named(self, prefix: str) -> list[FlowproofProcess]:
        return [p for name, p in self.by_name.items() if name.startswith(prefix)]

    async def start_all(self) -> None:
        """Start every process, then wait until each is ready."""
        for process in self.by_name.values():
            await process.start()
        await asyncio.gather(*(p.started() for p in self.by_name.values()))

    def died(self) -> list[str]:
        """Processes that exited without being asked to (a crash the scenario did not cause)."""
        return [
            f"{p.name} exited {p.process.returncode}:\n{p.log_tail()}"
            for p in self.by_name.values()
            if p.wanted and p.process is not None and p.process.returncode is not None
        ]

    async def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every process at once; each one's exit code (None: had to be killed)."""
        names = list(self.by_name)
        codes = await asyncio.gather(*(self.by_name[n].stop() for n in names))
        return dict(zip(names, codes, strict=True))

    async def kill_all(self) -> None:
        for process in self.by_name.values():
            if process.running:
                await process.kill()


def stray_processes(run_id: str) -> list[str]:
    """Processes (pid and command line) whose environment carries this run's marker."""
    marker = f"{RUN_MARKER}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if marker not in environ.split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # it ended while we looked, or is not ours to read
        if state == "Z":
            continue  # a zombie is already dead; its parent reaps it
        found.append(f"{entry.name} [{state}] {cmdline}")
    return found
