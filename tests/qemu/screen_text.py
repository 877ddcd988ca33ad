"""Reading the kernel's text screen back from a QEMU screendump.

The kernel draws its console with the 8x16 font in
`drivers/src/screen/font.rs`, in two colours (`FOREGROUND`, `BACKGROUND`
and the cursor rows in `drivers/src/screen/mod.rs`). This module reads
those same files, so a test knows exactly which pixels each character is:

- `render_line(text)` draws a line of text the way the kernel does;
- `screen_lines(ppm)` cuts a screendump into 8x16 cells and looks each one
  up among the rendered glyphs: exact pixel matches, no OCR. A cell that is
  no glyph (the cursor's cell, damage) reads as `?`.
- `expect_on_screen(ppm, line)` finds a line of text on the screen by
  comparing its rendered pixels with every text row.
- `ppm_to_png(ppm, png)` writes a PNG (zlib only) for the book.

Python standard library only.
"""

from __future__ import annotations

import re
import struct
import zlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FONT_RS = ROOT / "drivers" / "src" / "screen" / "font.rs"
SCREEN_RS = ROOT / "drivers" / "src" / "screen" / "mod.rs"

GLYPH_WIDTH = 8
GLYPH_HEIGHT = 16


@lru_cache(maxsize=1)
def font() -> dict[int, tuple[int, ...]]:
    """Byte -> its 16 pixel rows, from font.rs."""
    text = FONT_RS.read_text()
    first = int(re.search(r"pub const FIRST: u8 = (0x[0-9a-f]+);", text).group(1), 16)
    table = text[text.index("pub const GLYPHS") :]
    rows = re.findall(r"\[((?:0x[0-9a-f]{2}, ){15}0x[0-9a-f]{2})\]", table)
    glyphs = {first + i: tuple(int(v, 16) for v in row.split(", ")) for i, row in enumerate(rows)}
    if len(glyphs) != 0x7F - first:
        raise ValueError(f"{FONT_RS}: found {len(glyphs)} glyphs")
    return glyphs


@lru_cache(maxsize=1)
def colours() -> tuple[bytes, bytes]:
    """(foreground, background) as RGB bytes, from screen/mod.rs."""
    text = SCREEN_RS.read_text()

    def colour(name: str) -> bytes:
        m = re.search(rf"pub const {name}: \[u8; 3\] = \[(0x[0-9a-f]+), (0x[0-9a-f]+), (0x[0-9a-f]+)\];", text)
        if not m:
            raise ValueError(f"{SCREEN_RS}: no {name}")
        return bytes(int(v, 16) for v in m.groups())

    return colour("FOREGROUND"), colour("BACKGROUND")


class Image:
    """An RGB image (what a P6 PPM holds)."""

    def __init__(self, width: int, height: int, pixels: bytes) -> None:
        if len(pixels) != width * height * 3:
            raise ValueError(f"{width}x{height} image with {len(pixels)} bytes of pixels")
        self.width, self.height, self.pixels = width, height, pixels

    def row(self, y: int, x: int = 0, w: int | None = None) -> bytes:
        w = self.width - x if w is None else w
        start = (y * self.width + x) * 3
        return self.pixels[start : start + w * 3]


def read_ppm(path: Path) -> Image:
    """Parses a binary PPM (P6, maxval 255), as QMP `screendump` writes it."""
    data = Path(path).read_bytes()
    fields: list[bytes] = []
    at = 0
    while len(fields) < 4:
        while at < len(data) and data[at : at + 1].isspace():
            at += 1
        if data[at : at + 1] == b"#":
            at = data.index(b"\n", at) + 1
            continue
        end = at
        while end < len(data) and not data[end : end + 1].isspace():
            end += 1
        fields.append(data[at:end])
        at = end
    if fields[0] != b"P6" or fields[3] != b"255":
        raise ValueError(f"{path}: not a P6 PPM with maxval 255")
    width, height = int(fields[1]), int(fields[2])
    return Image(width, height, data[at + 1 : at + 1 + width * height * 3])


@lru_cache(maxsize=None)
def glyph_pixels(byte: int) -> tuple[bytes, ...]:
    """The 16 pixel rows (RGB) of one character cell as the kernel draws it."""
    fg, bg = colours()
    rows = font().get(byte, font()[ord("?")])
    return tuple(b"".join(fg if bits & (0x80 >> i) else bg for i in range(GLYPH_WIDTH)) for bits in rows)


def render_line(text: str) -> list[bytes]:
    """The 16 pixel rows (RGB) of a line of text."""
    cells = [glyph_pixels(ord(c)) for c in text]
    return [b"".join(cell[y] for cell in cells) for y in range(GLYPH_HEIGHT)]


@lru_cache(maxsize=1)
def glyph_lookup() -> dict[bytes, str]:
    cells: dict[bytes, str] = {}
    for byte in sorted(font()):
        key = b"".join(glyph_pixels(byte))
        cells.setdefault(key, chr(byte))
    return cells


def screen_lines(image: Image) -> list[str]:
    """The text on the screen, one string per text row (trailing blanks cut)."""
    lookup = glyph_lookup()
    lines = []
    for row in range(image.height // GLYPH_HEIGHT):
        chars = []
        for col in range(image.width // GLYPH_WIDTH):
            key = b"".join(
                image.row(row * GLYPH_HEIGHT + y, col * GLYPH_WIDTH, GLYPH_WIDTH) for y in range(GLYPH_HEIGHT)
            )
            chars.append(lookup.get(key, "?"))
        lines.append("".join(chars).rstrip())
    return lines


def find_rendered(image: Image, text: str) -> int | None:
    """The text row whose left part has exactly the pixels of `text`, or None."""
    want = render_line(text)
    width = len(text) * GLYPH_WIDTH
    if width > image.width:
        return None
    for row in range(image.height // GLYPH_HEIGHT):
        top = row * GLYPH_HEIGHT
        if all(image.row(top + y, 0, width) == want[y] for y in range(GLYPH_HEIGHT)):
            return row
    return None


def ppm_to_png(ppm: Path, png: Path) -> None:
    """Writes the PPM's pixels as an 8-bit RGB PNG."""
    image = read_ppm(ppm)
    raw = b"".join(b"\x00" + image.row(y) for y in range(image.height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", image.width, image.height, 8, 2, 0, 0, 0)
    png.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    )
