"""A fault-injecting TCP proxy on loopback, between flowproof and one service per route.

Each route listens on a loopback port and forwards to a target (`host:port`). Its mode can be
changed at any time:

- `pass`: bytes go through untouched;
- `delay S`: every chunk is held S seconds before it is forwarded (both ways, order kept);
- `drop`: every open connection is reset (RST) and new ones are reset as soon as they are
  accepted, until the mode changes: the service looks unreachable;
- `half-open`: new connections are accepted but never connected to the target, and open ones
  stop forwarding: whatever either side sends vanishes, nothing is closed. A connection caught
  by it stays dead for good (as behind a middlebox that lost its state): the client has to notice
  by its own timeouts. A side that closes its end still closes the other (what the server's TCP
  keepalive would do in time).

It runs as its own process so the traffic it forwards does not compete with the test's event
loop (`python -m tests.faults.proxy NAME=LISTEN_PORT:TARGET_HOST:TARGET_PORT ...`): it prints one
line `ready` when every route listens, then reads commands on stdin, one per line
(`NAME pass`, `NAME delay 0.2`, `NAME drop`, `NAME half-open`, `NAME stats`), answering each with
one line, `ok ...` or `error ...`. `ProxyProcess` drives it from a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 64 * 1024
MODES = ("pass", "delay", "drop", "half-open")


@dataclass(eq=False)
class _Link:
    """One client connection and, unless it was caught half-open, its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dead: bool = False  # caught by half-open: never forwards again
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.is_closing():
                writer.close()


class Route:
    """One listening port forwarding to one target, with a mode that can change."""

    def __init__(self, name: str, listen_port: int, target: tuple[str, int]) -> None:
        self.name = name
        self.listen_port = listen_port
        self.target = target
        self.mode = "pass"
        self.delay = 0.0
        self.accepted = 0
        self.reset_count = 0
        self.forwarded_bytes = 0
        self.delayed_chunks = 0  # forwarded late, in `delay` mode
        self.caught_half_open = 0  # connections `half-open` killed (open then, or new since)
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # one per accepted connection
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.listen_port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
            for task in link.tasks:
                task.cancel()
        # A connection accepted while its upstream was still connecting has no link tasks yet:
        # its handler is cancelled too, so that no upstream connection outlives the route (one
        # left open was found by the garbage collector during a later test).
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        """Change the mode; `drop` resets every open connection, `half-open` kills them."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self.mode = mode
        self.delay = delay if mode == "delay" else 0.0
        if mode == "drop":
            for link in list(self._links):
                self.reset_count += 1
                link.reset()
        elif mode == "half-open":
            for link in self._links:
                self.caught_half_open += not link.dead
                link.dead = True

    def stats(self) -> dict[str, object]:
        return {
            "route": self.name,
            "mode": self.mode,
            "delay": self.delay,
            "open": len(self._links),
            "dead": sum(1 for link in self._links if link.dead),
            "accepted": self.accepted,
            "reset": self.reset_count,
            "forwarded_bytes": self.forwarded_bytes,
            "delayed_chunks": self.delayed_chunks,
            "caught_half_open": self.caught_half_open,
        }

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        self.accepted += 1
        if self.mode == "drop":
            self.reset_count += 1
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode == "half-open":
                link.dead = True
                self.caught_half_open += 1
                await self._swallow(reader)
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()  # the target is down: so is the route
                return
            link.tasks = [
                asyncio.create_task(self._pipe(reader, link.upstream, link), name="proxy.up"),
                asyncio.create_task(self._pipe(up_reader, writer, link), name="proxy.down"),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(link)
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            link.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(CHUNK):
            pass

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Copy reader to writer in this route's mode until either side closes."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer), name="proxy.send")
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    break  # reset by the peer: the link ends
                if not data:
                    break
                if link.dead:
                    continue  # half-open: it vanishes
                self.delayed_chunks += self.delay > 0
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait(None)
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            self.forwarded_bytes += len(data)
            try:
                await writer.drain()
            except OSError:
                return  # the other side is gone; the reader sees it too


def parse_route(text: str) -> Route:
    """`NAME=LISTEN_PORT:TARGET_HOST:TARGET_PORT`."""
    name, _, rest = text.partition("=")
    listen, host, port = rest.split(":")
    return Route(name, int(listen), (host, int(port)))


def apply(routes: dict[str, Route], line: str) -> str:
    """Run one control command; the answer line."""
    words = line.split()
    if len(words) < 2 or words[0] not in routes:
        return f"error unknown route or command: {line!r}"
    route, command = routes[words[0]], words[1]
    if command == "stats":
        return "ok " + json.dumps(route.stats())
    try:
        route.set_mode(command, float(words[2]) if len(words) > 2 else 0.0)
    except ValueError as exc:
        return f"error {exc}"
    return "ok " + json.dumps(route.stats())


async def serve(specs: Sequence[str]) -> None:
    """Listen on every route, then obey stdin until it closes (or SIGTERM)."""
    routes = {route.name: route for route in map(parse_route, specs)}
    for route in routes.values():
        await route.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    stopped = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            line_task = asyncio.create_task(reader.readline())
            await asyncio.wait({line_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not line_task.done():
                line_task.cancel()
                break
            line = line_task.result()
            if not line:
                break
            out.write(apply(routes, line.decode().strip()) + "\n")
            out.flush()
    finally:
        stopped.cancel()
        for route in routes.values():
            await route.close()


def _append(path: Path) -> BinaryIO:
    return path.open("ab")


class ProxyProcess:
    """The proxy as a child process, driven over its stdin/stdout from async test code."""

    def __init__(self, routes: dict[str, tuple[int, str, int]], log_path: Path) -> None:
        self.routes = routes  # name -> (listen port, target host, target port)
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    def port(self, name: str) -> int:
        return self.routes[name][0]

    async def start(self, env: dict[str, str]) -> Self:
        specs = [f"{n}={p}:{h}:{t}" for n, (p, h, t) in self.routes.items()]
        with _append(self.log_path) as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.faults.proxy",
                *specs,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=ROOT,
            )
        assert self.process.stdout is not None
        async with asyncio.timeout(20):
            line = await self.process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the proxy did not start: {line!r}; see {self.log_path}")
        return self

    async def command(self, route: str, *words: str) -> dict[str, object]:
        """Send one command; the route's stats after it (RuntimeError on `error ...`)."""
        process = self.process
        assert process is not None and process.stdin is not None and process.stdout is not None
        async with self._lock:
            process.stdin.write((" ".join((route, *words)) + "\n").encode())
            await process.stdin.drain()
            async with asyncio.timeout(10):
                answer = (await process.stdout.readline()).decode().strip()
        status, _, rest = answer.partition(" ")
        if status != "ok":
            raise RuntimeError(f"proxy command {route} {' '.join(words)}: {answer!r}")
        stats: dict[str, object] = json.loads(rest)
        return stats

    async def mode(self, route: str, mode: str, delay: float | None = None) -> dict[str, object]:
        return await self.command(route, mode, *(() if delay is None else (str(delay),)))

    async def stop(self) -> int | None:
        """Close stdin (it exits), SIGKILL if it does not within 10 s; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
