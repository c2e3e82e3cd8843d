"""Where /metrics listens: loopback only unless FLOWPROOF_METRICS_HOST says otherwise.

Each long-running command (relay, consume, verify) is started for real with its metrics port 0;
the address its listening socket is bound to is read from the kernel (/proc/net/tcp), not from
what the process says about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from flowproof.core.config import Settings

FLOWPROOF = [sys.executable, "-m", "flowproof"]
ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "relay": ("relay",),
    "consume": ("consume", "--sink", "redis"),
    "verify": ("verify",),
}
_LISTEN = "0A"


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses sockets in LISTEN state are bound to on `port`."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                address, _, hex_port = fields[1].partition(":")
                if fields[3] != _LISTEN or int(hex_port, 16) != port:
                    continue
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host order.
                words = struct.unpack(f"<{len(raw) // 4}I", raw)
                found.add(socket.inet_ntop(family, struct.pack(f">{len(words)}I", *words)))
    return found


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], *args: str) -> AsyncIterator[dict[str, Any]]:
    """Run a flowproof command until it logs `metrics.serving`; yield that log line."""
    process = await asyncio.create_subprocess_exec(
        *FLOWPROOF,
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(60):
            async for raw in process.stderr:
                with contextlib.suppress(ValueError):
                    line: dict[str, Any] = json.loads(raw)
                    if line.get("event") == "metrics.serving":
                        yield line
                        break
            else:
                raise AssertionError(f"{args} exited {await process.wait()} before serving")
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def _port(line: dict[str, Any]) -> int:
    """The port of the `metrics.serving` line's url, http://host:port/metrics."""
    return int(str(line["url"]).rsplit(":", 1)[1].split("/", 1)[0])


def test_the_default_is_loopback() -> None:
    assert Settings().metrics_host == "127.0.0.1"
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "| `FLOWPROOF_METRICS_HOST` | `127.0.0.1` |" in docs


async def test_each_long_running_command_binds_loopback_by_default(
    settings_env: dict[str, str],
) -> None:
    env = {k: v for k, v in settings_env.items() if k != "FLOWPROOF_METRICS_HOST"}

    async def bound(command: str) -> tuple[str, set[str]]:
        async with serving(env, *COMMANDS[command]) as line:
            return str(line["url"]), listening_addresses(_port(line))

    found = await asyncio.gather(*(bound(command) for command in COMMANDS))
    for url, addresses in found:
        assert addresses == {"127.0.0.1"}, (url, addresses)


async def test_the_address_is_configurable(settings_env: dict[str, str]) -> None:
    env = {**settings_env, "FLOWPROOF_METRICS_HOST": "0.0.0.0"}
    async with serving(env, "relay") as line:
        assert listening_addresses(_port(line)) == {"0.0.0.0"}, str(line["url"])
