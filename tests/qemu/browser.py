"""A real browser for the live queue view's scenario: headless Chromium, as
Debian packages it (`chromium`), driven from the command line.

- `find_chromium`: the browser's path, or None (`x.py test` installs the
  `chromium` package with apt-get when a chosen scenario needs it, saying so).
- `dump_dom`: loads a page, lets its scripts run for a while of virtual
  time (`--virtual-time-budget`: timers run, fetches are waited for), and
  returns the DOM as HTML.
- `screenshot`: the same, saved as a PNG.
- `png_is_blank`: a PNG decoder just far enough (8-bit RGB/RGBA, the five
  row filters) to say whether an image has a single colour.

Every run gets a fresh `--user-data-dir` and the flags that keep Chromium
from reaching out to the network on its own (no QUIC, no background
networking, no component updates, no sync, no first-run tasks).

Python standard library only.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

#: The names Debian and others give the browser's program.
CHROMIUM_PROGRAMS = ("chromium", "chromium-browser")
#: The Debian package that brings it.
CHROMIUM_PACKAGE = "chromium"

#: Flags for every run: headless, no sandbox (tests may run as root), no
#: GPU, and nothing that talks to the network by itself.
QUIET_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    """The path of the Chromium program, if one is installed."""
    for name in CHROMIUM_PROGRAMS:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def run_chromium(url: str, action: list[str], budget_ms: int, timeout_s: float) -> subprocess.CompletedProcess:
    """One headless run on `url` with a fresh profile; raises AssertionError
    if the browser is missing, fails or hangs."""
    program = find_chromium()
    if program is None:
        raise AssertionError("chromium is not installed (`x.py test` installs the chromium package)")
    with tempfile.TemporaryDirectory(prefix="qview-chromium-") as profile:
        args = [program, *QUIET_FLAGS, f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}", *action, url]
        try:
            done = subprocess.run(args, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"chromium did not finish within {timeout_s:.0f} s on {url}") from err
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace")[-600:]
        raise AssertionError(f"chromium exited with {done.returncode} on {url}: {tail}")
    return done


def dump_dom(url: str, budget_ms: int = 3000, timeout_s: float = 90.0) -> str:
    """The page's DOM after `budget_ms` of virtual time, as HTML."""
    return run_chromium(url, ["--dump-dom"], budget_ms, timeout_s).stdout.decode("utf-8", "replace")


def screenshot(url: str, path: Path, size: tuple[int, int] = (1000, 2500), budget_ms: int = 3000,
               timeout_s: float = 90.0) -> None:
    """Saves the page, after `budget_ms` of virtual time, as a PNG at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    run_chromium(url, [f"--screenshot={path}", f"--window-size={size[0]},{size[1]}"], budget_ms, timeout_s)
    if not path.exists():
        raise AssertionError(f"chromium wrote no screenshot to {path}")


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit RGB or RGBA PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    at, idat, header = 8, bytearray(), None
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        at += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            upper_left = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - upper_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upper_left)
                line[i] = (line[i] + pred) & 0xFF
            elif kind != 0:
                raise ValueError(f"bad PNG filter {kind} in row {y}")
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def png_colours(path: Path, limit: int = 64) -> int:
    """How many distinct pixel values the PNG at `path` has (counting stops at `limit`)."""
    width, _, rows = png_pixels(Path(path).read_bytes())
    bpp = len(rows[0]) // width if rows else 3
    seen: set[bytes] = set()
    for row in rows:
        for x in range(0, len(row), bpp * 7):  # every 7th pixel is plenty
            seen.add(row[x:x + bpp])
            if len(seen) >= limit:
                return len(seen)
    return len(seen)
