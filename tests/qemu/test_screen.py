"""Unit tests of the host side of the screen scenarios: reading text back
from a screendump (screen_text.py), the QMP key names (qmp.py) and what
`x.py run --display` does with and without a window (display.py).

The screen reader must fail on a wrong pixel: a test that reads any image
as the expected text would pass a broken kernel.
"""

from __future__ import annotations

import tempfile
import unittest
import zlib
from pathlib import Path

from . import display, qmp, screen_text

GLYPH_W, GLYPH_H = screen_text.GLYPH_WIDTH, screen_text.GLYPH_HEIGHT


def screen_image(lines: list[str], cols: int = 20, rows: int = 3) -> screen_text.Image:
    """What the kernel would show: `lines` in its font, background elsewhere."""
    _, bg = screen_text.colours()
    width, height = cols * GLYPH_W, rows * GLYPH_H
    pixel_rows = []
    for row in range(rows):
        text = (lines[row] if row < len(lines) else "").ljust(cols)
        pixel_rows += screen_text.render_line(text)
    pixels = b"".join(pixel_rows)
    assert len(pixels) == width * height * 3 and bg
    return screen_text.Image(width, height, pixels)


def write_ppm(image: screen_text.Image, path: Path) -> Path:
    path.write_bytes(f"P6\n# a comment\n{image.width} {image.height}\n255\n".encode() + image.pixels)
    return path


class ScreenTextTest(unittest.TestCase):
    def test_font_has_every_printable_ascii_glyph_and_they_differ(self):
        font = screen_text.font()
        self.assertEqual(sorted(font), list(range(0x20, 0x7F)))
        # Each glyph reads back as itself: no two are the same pixels.
        self.assertEqual(len(screen_text.glyph_lookup()), len(font))

    def test_rendered_text_reads_back_through_a_ppm(self):
        image = screen_image(["kernel> uptime", "up 1.000000 s"])
        with tempfile.TemporaryDirectory() as tmp:
            parsed = screen_text.read_ppm(write_ppm(image, Path(tmp) / "s.ppm"))
        self.assertEqual(screen_text.screen_lines(parsed), ["kernel> uptime", "up 1.000000 s", ""])
        self.assertEqual(screen_text.find_rendered(parsed, "up 1.000000 s"), 1)
        self.assertIsNone(screen_text.find_rendered(parsed, "up 2.000000 s"))

    def test_one_wrong_pixel_is_noticed(self):
        image = screen_image(["error: x"])
        damaged = bytearray(image.pixels)
        # The top-left pixel of the 'x' cell (column 7), made foreground.
        fg, _ = screen_text.colours()
        at = (0 * image.width + 7 * GLYPH_W) * 3
        damaged[at:at + 3] = fg
        broken = screen_text.Image(image.width, image.height, bytes(damaged))
        self.assertEqual(screen_text.screen_lines(broken)[0], "error: ?")
        self.assertIsNone(screen_text.find_rendered(broken, "error: x"))

    def test_not_a_ppm_is_an_error(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "x.ppm"
            path.write_bytes(b"P5\n2 2\n255\n\0\0\0\0")
            with self.assertRaises(ValueError):
                screen_text.read_ppm(path)
            path.write_bytes(b"P6\n2 2\n255\n\0\0\0")
            with self.assertRaises(ValueError):
                screen_text.read_ppm(path)

    def test_png_has_the_pixels(self):
        image = screen_image(["hi"], cols=2, rows=1)
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "s.png"
            screen_text.ppm_to_png(write_ppm(image, Path(tmp) / "s.ppm"), png)
            data = png.read_bytes()
        self.assertTrue(data.startswith(b"\x89PNG\r\n\x1a\n"))
        idat = data.index(b"IDAT")
        length = int.from_bytes(data[idat - 4:idat], "big")
        raw = zlib.decompress(data[idat + 4:idat + 4 + length])
        self.assertEqual(raw[1:1 + image.width * 3], image.row(0))


class QmpKeysTest(unittest.TestCase):
    def test_every_printable_character_has_a_key(self):
        for ch in map(chr, range(0x20, 0x7F)):
            self.assertTrue(ch in qmp.PLAIN or ch in qmp.SHIFTED, repr(ch))

    def test_shifted_characters_press_shift(self):
        pressed = []

        class Fake(qmp.Qmp):
            def __init__(self):  # no socket
                pass

            def press(self, *keys):
                pressed.append(keys)

        Fake().send_keys("aA!\n", pause_s=0)
        self.assertEqual(pressed, [("a",), ("shift", "a"), ("shift", "1"), ("ret",)])
        with self.assertRaises(ValueError):
            Fake().send_keys("\u00e9", pause_s=0)


class DisplayPlanTest(unittest.TestCase):
    def test_a_window_when_there_is_a_display_and_a_backend(self):
        plan = display.plan("q35", Path("/b/q.sock"), env={"DISPLAY": ":0"}, backends=["gtk", "sdl"])
        self.assertEqual(plan.args[-2:], ["-display", "gtk"])
        self.assertIn("virtio-gpu-pci", plan.args)
        self.assertIn("virtio-keyboard-pci", plan.args)

    def test_vnc_and_screendump_without_a_display(self):
        plan = display.plan("microvm", Path("/b/q.sock"), env={}, backends=["gtk"])
        self.assertIn("virtio-gpu-device", plan.args)
        self.assertIn("-vnc", plan.args)
        self.assertNotIn("-display", plan.args)
        text = "\n".join(plan.messages)
        self.assertIn("no window here", text)
        self.assertIn("screendump", text)

    def test_a_display_without_a_backend_says_what_to_install(self):
        plan = display.plan("q35", Path("/b/q.sock"), env={"WAYLAND_DISPLAY": "w"}, backends=[])
        self.assertIn("qemu-system-gui", "\n".join(plan.messages))
        self.assertNotIn("-display", plan.args)


if __name__ == "__main__":
    unittest.main()
