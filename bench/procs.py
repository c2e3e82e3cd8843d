"""`flowproof` commands as subprocesses, with their memory read from /proc/<pid>/status.

Peak RSS is the kernel's VmHWM of the process, read just before it is stopped; `samples` keeps
(seconds since start, VmRSS) pairs for the soak's memory curve. stderr (JSON logs) goes to a file,
shown when a process fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 1024 * 1024


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after "(comm) " (empty when the process is gone): field n
    of the whole line is index n - 3 here (utime, 14, is 11)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far (0 when it is gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _pid_file(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def service_cpu(stack: Path) -> dict[str, float]:
    """CPU seconds used so far by the devstack's PostgreSQL (the postmaster, its live children
    and those it has reaped), Redis and Kafka (and the nodes of `up --kafka-cluster`, summed as
    `kafka-cluster`); a service the devstack does not run is left out."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = {
        "postgresql": _pid_file(stack / "postgres" / "data" / "postmaster.pid"),
        "redis": _pid_file(stack / "redis" / "redis.pid"),
        "kafka": _pid_file(stack / "kafka" / "kafka.pid"),
    }
    found: dict[str, float] = {}
    for name, pid in pids.items():
        fields = _stat_fields(pid) if pid is not None else []
        if not fields:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of the line, 12-15 after "(comm) "
        total = sum(int(v) for v in fields[11:15])
        if name == "postgresql":
            for child in Path("/proc").iterdir():
                if child.name.isdigit():
                    stat = _stat_fields(int(child.name))
                    if stat and stat[1] == str(pid):  # field 4, ppid
                        total += int(stat[11]) + int(stat[12])
        found[name] = total / tick
    nodes = [_pid_file(p) for p in sorted(stack.glob("kafka-cluster/node-*/kafka.pid"))]
    stats = [_stat_fields(pid) for pid in nodes if pid is not None]
    if stats and all(stats):
        found["kafka-cluster"] = sum(int(v) for f in stats for v in f[11:15]) / tick
    return found


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in bytes (empty when the process is gone)."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(rest.split()[0]) * 1024
    return found


class Flowproof:
    """One `flowproof <args>` process."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], profile: Path | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.profile = profile  # where py-spy writes its collapsed stacks, when given
        self.process: asyncio.subprocess.Process | None = None
        self._profiler: asyncio.subprocess.Process | None = None
        self.peak_rss = 0
        self.cpu = 0.0  # CPU seconds used, read just before it is stopped
        self.samples: list[tuple[float, int]] = []
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open while it runs
            prefix=f"flowproof-bench-{name}-", suffix=".log", delete=False
        )
        self._started = 0.0
        self._sampler: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, sample_every: float = 0.0) -> Flowproof:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flowproof",
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log,
        )
        self._started = time.monotonic()
        if self.profile is not None:
            self._profiler = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(self.process.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.profile),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        if sample_every > 0:
            self._sampler = asyncio.create_task(self._sample(sample_every), name=f"rss.{self.name}")
        return self

    def read_memory(self) -> int:
        """Record the current RSS and the peak so far; return the RSS."""
        status = proc_status(self.pid)
        self.peak_rss = max(self.peak_rss, status.get("VmHWM", 0))
        rss = status.get("VmRSS", 0)
        if rss:
            self.samples.append((time.monotonic() - self._started, rss))
        return rss

    async def _sample(self, every: float) -> None:
        while self.process is not None and self.process.returncode is None:
            self.read_memory()
            await asyncio.sleep(every)

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.returncode is not None:
            raise RuntimeError(
                f"{self.name} exited {self.process.returncode} early:\n{self.log_tail()}"
            )

    async def stop(self, within: float = 30.0) -> int:
        """SIGTERM (after reading the peak RSS); SIGKILL if it does not stop in time."""
        assert self.process is not None
        if self.process.returncode is None:
            self.read_memory()
            self.cpu = cpu_seconds(self.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(within):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._profiler is not None:  # it writes its output once the target has exited
            await self._profiler.wait()
        self._log.close()
        return self.process.returncode if self.process.returncode is not None else -1

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def remove_log(self) -> None:
        Path(self._log.name).unlink(missing_ok=True)


# Started by the bench (a large process), a command's own peak RSS would include the bench's: the
# kernel counts the memory a child had before exec (shared with the parent under vfork) in its
# ru_maxrss. So a small launcher starts the command and reports the peak of its child alone.
_LAUNCHER = """
import os, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
os.write(int(sys.argv[1]), str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss).encode())
sys.exit(code if code >= 0 else 128 - code)
"""


def run_once(args: list[str], env: dict[str, str], within: float) -> tuple[int, bytes, int, str]:
    """Run a one-shot `flowproof` command; its exit code, stdout, exact peak RSS (bytes, from
    the rusage of its launcher's child) and the tail of its stderr. Blocking: call it in a
    thread."""
    peak_read, peak_write = os.pipe()
    with tempfile.TemporaryFile() as err:
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(peak_write), sys.executable, "-m",
                 "flowproof", *args],
                env=env, stdout=subprocess.PIPE, stderr=err, pass_fds=(peak_write,),
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(peak_write)
        assert child.stdout is not None
        killer = threading.Timer(within, os.killpg, (child.pid, signal.SIGKILL))
        killer.start()
        try:
            out = child.stdout.read()
            code = child.wait()
        finally:
            killer.cancel()
        with os.fdopen(peak_read, "rb") as peak:
            reported = peak.read()
        if code == -signal.SIGKILL:
            raise TimeoutError(f"flowproof {' '.join(args)} took longer than {within} s")
        if code > 128:  # the command died of a signal (the launcher's convention above)
            code = -(code - 128)
        err.seek(0)
        tail = "\n".join(err.read().decode(errors="replace").splitlines()[-30:])
    return code, out, int(reported or 0) * 1024, tail
