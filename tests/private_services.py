"""Private Redis and Kafka servers for tests that stop, kill or restart a service.

The shared services of `.devstack` must never be stopped (other tests use them at the same
time), so a fault test starts its own instance here, on free loopback ports, with its data and
log in a folder of its own (a pytest `tmp_path`), and may then `stop()`, `kill()` and
`restart()` it. The data folder survives a restart, as a real server's disk would.

    with PrivateRedis(tmp_path / "redis") as redis_server:
        settings = settings.model_copy(update={"redis_url": SecretStr(redis_server.url)})
        ...
        redis_server.stop()        # SIGTERM, wait for exit
        redis_server.restart()     # same port, same data; returns once healthy

`start()` returns once the server answers; if it does not within `start_timeout`, the process
is killed and ServiceFailed carries the last lines of its log. Every method is blocking; from
async code call it with `await asyncio.to_thread(server.restart)` so the event loop (and the
relay in it) keeps running meanwhile. The Kafka broker runs from the jars `devstack/stack.sh`
fetched into `.devstack/kafka-libs-<version>/` (KRaft, one node, broker and controller).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
DEVSTACK = Path(os.environ.get("DEVSTACK_DIR", ROOT / ".devstack"))


class ServiceFailed(RuntimeError):
    """A private service did not start (the message ends with its log's last lines)."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateService:
    """A server process this test owns: start, stop (SIGTERM), kill (SIGKILL), restart."""

    name = "service"

    def __init__(self, workdir: Path, *, start_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.log_path = workdir / "log" / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        (workdir / "log").mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(parents=True, exist_ok=True)

    # --- what a subclass provides ------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _healthy(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Set-up before the first start (configuration files, storage format)."""

    # --- life cycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> Self:
        """Start the server and wait until it is healthy (ServiceFailed with the log if not)."""
        if self.running:
            return self
        self._prepare()
        out = (self.workdir / "log" / f"{self.name}.stdout").open("ab")
        try:
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest does not hit it first
            )
        finally:
            out.close()
        self._wait_healthy()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, and wait for the process to exit (SIGKILL after `timeout`)."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or say goodbye."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same ports with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Kill the process if it still runs (the folder is the test's tmp_path to remove)."""
        if self.running:
            self.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def _signal(self, signum: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self._healthy():
            process = self._process
            exited = process is not None and process.poll() is not None
            if exited or time.monotonic() > deadline:
                self.close()
                why = "exited" if exited else f"was not healthy within {self.start_timeout} s"
                raise ServiceFailed(
                    f"private {self.name} in {self.workdir} {why}; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)


class PrivateRedis(PrivateService):
    """redis-server on a free loopback port; AOF on with fsync always, so a kill loses nothing
    the server acknowledged."""

    name = "redis"

    def __init__(self, workdir: Path, *, start_timeout: float = 30.0) -> None:
        super().__init__(workdir, start_timeout=start_timeout)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir / "data"),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip

    def _healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def kafka_libs() -> Path:
    """The folder of the Kafka broker's jars that `make stack-up` fetched."""
    found = sorted(DEVSTACK.glob("kafka-libs-*/.complete"))
    if not found:
        raise ServiceFailed(
            f"no Kafka jars in {DEVSTACK}/kafka-libs-*/: run `make stack-up` once to fetch them"
        )
    return found[-1].parent


class PrivateKafka(PrivateService):
    """A single-node KRaft Kafka broker (broker and controller in one JVM) on free ports."""

    name = "kafka"

    def __init__(
        self, workdir: Path, *, start_timeout: float = 90.0, heap: str = "512m", partitions: int = 3
    ) -> None:
        super().__init__(workdir, start_timeout=start_timeout)
        self.port = free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.partitions = partitions
        self.libs = kafka_libs()
        self._props = workdir / "server.properties"
        self._log_offset = 0
        self._log4j = workdir / "log4j2.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            shutil.which("java") or "java",
            "-cp", f"{self.libs}/*",
            f"-Xms{self.heap}", f"-Xmx{self.heap}",
            "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",  # starts faster; enough for tests
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._log4j}",
            main, *args,
        ]  # fmt: skip

    def _command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self._props))

    def _prepare(self) -> None:
        # "Kafka Server started" must be read from this start's lines, not an earlier start's.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if (self.workdir / "data" / "meta.properties").exists():
            return
        self._props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.workdir / 'data'}",
                    f"num.partitions={self.partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.flush.interval.messages=1",  # a kill loses nothing acknowledged
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self._log4j.write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.file.type = File",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {self.log_path}",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        # A KRaft cluster id is 16 random bytes in URL-safe base64 without padding.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        format_log = self.workdir / "log" / "format.log"
        with format_log.open("wb") as out:
            result = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self._props)
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=self.start_timeout,
                check=False,
            )
        if result.returncode != 0:
            raise ServiceFailed(
                f"formatting the private Kafka storage failed; last lines of {format_log}:\n"
                f"{_tail(format_log)}"
            )

    def _healthy(self) -> bool:
        if not _port_open(self.port):
            return False
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return b"Kafka Server started" in log.read()
        except OSError:
            return False
