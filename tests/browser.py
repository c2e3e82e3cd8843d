"""A real headless browser for the tests: Debian's `chromium`, reaching loopback only.

`chromium` missing fails the test that needs it, saying how to install it (never a skip). Every
run gets its own profile directory, and a proxy that does not exist for every host but loopback,
so the browser cannot reach anything outside this machine (no update checks, no telemetry).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Screenshots the tests take, kept for people to look at (git-ignored).
ARTIFACTS = ROOT / "tests" / "artifacts"
HOW_TO_INSTALL = (
    "chromium is missing: install Debian's `chromium` package "
    "(`sudo apt-get install chromium`; `make stack-up` installs it when run as root)"
)
WINDOW = (1280, 1500)


def chromium() -> str:
    """The chromium binary, or a test failure saying how to install it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(HOW_TO_INSTALL)
    return path


def _run(profile: Path, *args: str) -> str:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # the tests may run as root, where chromium's sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=http://127.0.0.1:9",  # nothing listens there; loopback bypasses it
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"chromium failed: {result.stderr[-2000:]}"
    return result.stdout


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after it loaded, serialised as HTML."""
    return _run(profile, "--dump-dom", url)


def screenshot(url: str, path: Path, profile: Path) -> Path:
    """A PNG of the page at WINDOW's size."""
    _run(profile, f"--screenshot={path}", url)
    assert path.is_file(), f"chromium wrote no screenshot at {path}"
    return path


def keep(path: Path) -> Path:
    """Copy a test's screenshot to tests/artifacts/ (stable, git-ignored); return the copy."""
    ARTIFACTS.mkdir(exist_ok=True)
    return Path(shutil.copy(path, ARTIFACTS / path.name))


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def png_pixel(path: Path, x: int) -> tuple[int, int, int]:
    """The colour of pixel (x, 0) of an 8-bit RGB or RGBA PNG (the top row only, so the
    scanline filter needs no previous row)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, _, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format (depth {depth}, {colour})"
    chunks, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            chunks += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    size = 3 if colour == 2 else 4
    raw = zlib.decompressobj().decompress(chunks, 1 + width * size)
    row = _unfilter_first_row(raw[0], bytearray(raw[1 : 1 + width * size]), size)
    r, g, b = row[x * size : x * size + 3]
    return r, g, b


def _unfilter_first_row(kind: int, row: bytearray, size: int) -> bytearray:
    # With no previous row, Up is None, Average halves the left byte and Paeth picks the left.
    for i in range(size, len(row)):
        left = row[i - size]
        if kind in (1, 4):
            row[i] = (row[i] + left) % 256
        elif kind == 3:
            row[i] = (row[i] + left // 2) % 256
    return row
