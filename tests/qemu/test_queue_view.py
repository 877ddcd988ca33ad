"""Unit tests of the live queue view's host side (tests/qemu/queue_view.py
and browser.py): the PNG reader that calls a screenshot blank or not, the
checks of the `/api/queues` document, and the reading of the page's DOM.

PNGs are built here from raw rows with every row filter, so a decoder that
gets a filter wrong, or a "non-blank" check that passes a one-colour image,
fails here; the API check is fed a good document and broken copies of it.
"""

from __future__ import annotations

import copy
import struct
import tempfile
import unittest
import zlib
from pathlib import Path

from . import browser, queue_view


def png(rows: list[bytes], width: int, filters: list[int], colour: int = 2) -> bytes:
    """An 8-bit PNG of `rows` (raw pixels), each row written with its filter."""
    bpp = 3 if colour == 2 else 4
    out = bytearray()
    previous = bytes(width * bpp)
    for row, kind in zip(rows, filters):
        encoded = bytearray()
        for i, value in enumerate(row):
            left = row[i - bpp] if i >= bpp else 0
            up = previous[i]
            upper_left = previous[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = left
            elif kind == 2:
                pred = up
            elif kind == 3:
                pred = (left + up) // 2
            else:
                p = left + up - upper_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upper_left)
            encoded.append((value - pred) & 0xFF)
        out += bytes([kind]) + encoded
        previous = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, len(rows), 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")


class PngTest(unittest.TestCase):
    def test_every_filter_decodes_to_the_same_pixels(self) -> None:
        width = 9
        rows = [bytes((x * 37 + y * 91 + c * 13) & 0xFF for x in range(width) for c in range(3)) for y in range(5)]
        data = png(rows, width, [0, 1, 2, 3, 4])
        w, h, decoded = browser.png_pixels(data)
        self.assertEqual((w, h), (width, 5))
        self.assertEqual(decoded, rows)

    def test_a_one_colour_image_is_blank_and_a_drawing_is_not(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            blank = Path(tmp) / "blank.png"
            blank.write_bytes(png([bytes([255] * 8 * 4)] * 6, 8, [0, 2, 2, 2, 2, 2], colour=6))
            self.assertEqual(browser.png_colours(blank), 1)
            drawing = Path(tmp) / "drawing.png"
            rows = [bytes((x * 7 + y * 50) & 0xFF for x in range(60 * 3)) for y in range(6)]
            drawing.write_bytes(png(rows, 60, [1, 4, 3, 2, 0, 4]))
            self.assertGreaterEqual(browser.png_colours(drawing), 4)

    def test_what_is_not_a_png_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            browser.png_pixels(b"GIF89a....")


def good_document() -> dict:
    def queue(index: int, name: str, size: int, packed: bool) -> dict:
        q = {key: 0 for key in queue_view.STABLE_QUEUE_FIELDS}
        q.update(index=index, name=name, size=size, descriptors="." * min(size, 256), free_descriptors=size)
        if packed:
            q["packed"] = {"driver_wrap_counter": 1, "device_wrap_counter": 1,
                           "driver_event": {}, "device_event": {}}
        else:
            q["split"] = {"avail_flags": 0, "used_flags": 0}
        return q

    def device(kind: str, ring: str, features: list[str], queues: list[dict]) -> dict:
        return {"type": kind, "location": f"pci {kind}", "transport": "pci-modern", "ring": ring,
                "state": "up, driven by x", "features": features, "queues": queues}

    return {
        "schema": 1, "uptime_ms": 5,
        "descriptor_states": {".": "free", "H": "head"},
        "devices": [
            device("blk", "split", ["BLK_FLUSH", "VERSION_1"], [queue(0, "requestq", 256, False)]),
            device("net", "split", ["VERSION_1"], [queue(0, "receiveq", 1024, False), queue(1, "transmitq", 256, False)]),
            device("console", "packed", ["VERSION_1"], [queue(0, "port0-rx", 16, True)]),
        ],
    }


class ApiCheckTest(unittest.TestCase):
    def test_a_good_document_passes_and_counts_its_queues(self) -> None:
        problems: list[str] = []
        self.assertEqual(queue_view.check_api(good_document(), problems), 4)
        self.assertEqual(problems, [])

    def test_broken_documents_fail(self) -> None:
        breakages = {
            "a stable field missing": lambda d: d["devices"][0]["queues"][0].pop("used_event"),
            "a device missing": lambda d: d["devices"].pop(1),
            "the console split": lambda d: d["devices"][2].update(ring="split"),
            "too few descriptor states": lambda d: d["devices"][0]["queues"][0].update(descriptors="..."),
            "an unknown state": lambda d: d["devices"][0]["queues"][0].update(descriptors="?" * 256),
            "no features": lambda d: d["devices"][1].update(features=None),
            "a device down": lambda d: d["devices"][0].update(state="left reset"),
        }
        for what, breakage in breakages.items():
            doc = copy.deepcopy(good_document())
            breakage(doc)
            problems: list[str] = []
            queue_view.check_api(doc, problems)
            self.assertTrue(problems, f"{what}: not noticed")


class DomTest(unittest.TestCase):
    def test_drawings_are_read_from_the_dom(self) -> None:
        dom = ('<div><svg class="queue" width="5" data-device="net" data-location="pci 0000:00:02.0" '
               'data-queue="1" data-avail-idx="12" data-used-idx="10"><rect/></svg>'
               '<svg class="legend"></svg></div>')
        self.assertEqual(queue_view.svg_indices(dom), {("net", "pci 0000:00:02.0", "1"): ("12", "10")})
        self.assertEqual(len(queue_view.SVG_TAG.findall(dom)), 1)


if __name__ == "__main__":
    unittest.main()
