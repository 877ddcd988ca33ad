"""Unit tests of the host side of the virtio-blk scenarios (tests/qemu/blk.py).

They pin the data generator to the same known answers the guest checks
(kernel/src/block/pattern.rs `self_check`), and prove that the image check
fails on a wrong byte, a missing announcement and a generator mismatch.
"""

from __future__ import annotations

import tempfile
import unittest
import zlib
from pathlib import Path

from . import blk, scenarios

SEED = 0x1234_5678


def wrote_line(serial: str, sector: int, count: int, seed: int) -> str:
    data = blk.pattern(seed, sector * blk.SECTOR, count * blk.SECTOR)
    return f"blk: wrote serial={serial} sector={sector} count={count} seed={seed:#x} crc32={zlib.crc32(data):#010x}"


class PatternTest(unittest.TestCase):
    def test_splitmix64_known_answers(self):
        self.assertEqual([blk.splitmix64(0, k) for k in range(3)],
                         [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F])

    def test_pattern_depends_on_position_not_on_where_it_starts(self):
        whole = blk.pattern(7, 0, 64)
        self.assertEqual(blk.pattern(7, 32, 32), whole[32:])
        self.assertNotEqual(blk.pattern(8, 0, 64), whole)

    def test_disk_names(self):
        self.assertEqual([scenarios.blk_name(i) for i in (0, 25, 26, 701, 702)],
                         ["vda", "vdz", "vdaa", "vdzz", "vdaaa"])


class ImageCheckTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "disk.img"
        self.size = 64 * blk.SECTOR
        self.initial = bytes(self.size)

    def tearDown(self):
        self.dir.cleanup()

    def image_after(self, *regions: tuple[int, int, int]) -> bytearray:
        image = bytearray(self.initial)
        for sector, count, seed in regions:
            image[sector * blk.SECTOR:(sector + count) * blk.SECTOR] = blk.pattern(
                seed, sector * blk.SECTOR, count * blk.SECTOR)
        return image

    def check(self, image: bytes, log: str) -> list[str]:
        self.path.write_bytes(image)
        return blk.check_image(self.path, self.initial, log, "scratch0")

    def test_exact_image_passes(self):
        log = "\n".join([wrote_line("scratch0", 3, 5, SEED), wrote_line("scratch0", 5, 10, SEED + 1)])
        image = self.image_after((3, 5, SEED), (5, 10, SEED + 1))
        self.assertEqual(self.check(bytes(image), log), [])

    def test_one_wrong_byte_anywhere_fails(self):
        log = wrote_line("scratch0", 3, 5, SEED)
        for offset in (0, 3 * blk.SECTOR + 100, self.size - 1):
            image = self.image_after((3, 5, SEED))
            image[offset] ^= 0x40
            problems = self.check(bytes(image), log)
            self.assertTrue(problems, f"flipped byte at {offset} not noticed")
            self.assertIn(f"sector {offset // blk.SECTOR}", problems[0])

    def test_unannounced_write_fails(self):
        image = self.image_after((3, 5, SEED), (20, 1, SEED))
        self.assertTrue(self.check(bytes(image), wrote_line("scratch0", 3, 5, SEED)))

    def test_generator_mismatch_fails(self):
        line = wrote_line("scratch0", 3, 5, SEED).replace("crc32=0x", "crc32=0x1")
        problems = self.check(bytes(self.image_after((3, 5, SEED))), line)
        self.assertTrue(any("generators disagree" in p for p in problems))

    def test_zeroed_and_discarded(self):
        log = "\n".join([
            wrote_line("scratch0", 0, 16, SEED),
            "blk: zeroed serial=scratch0 sector=2 count=2",
            "blk: discarded serial=scratch0 sector=8 count=4",
        ])
        image = self.image_after((0, 16, SEED))
        image[2 * blk.SECTOR:4 * blk.SECTOR] = bytes(2 * blk.SECTOR)
        # Discarded sectors may keep their data or read as zeroes, nothing else.
        image[9 * blk.SECTOR:10 * blk.SECTOR] = bytes(blk.SECTOR)
        self.assertEqual(self.check(bytes(image), log), [])
        image[10 * blk.SECTOR] ^= 1
        self.assertTrue(self.check(bytes(image), log))

    def test_no_writes_where_writes_were_due(self):
        problems = self.check(self.initial, "")
        self.assertTrue(any("no writes" in p for p in problems))

    def test_block_line_parses(self):
        line = ("block: vdb at pci 0000:00:05.0 transport=pci-legacy serial=scratch1 sectors=24576 "
                "block_size=512 read_only=no queue_size=256 max_segments=32 features=RING_EVENT_IDX|BLK_FLUSH")
        (disk,) = blk.disk_lines(line)
        self.assertEqual((disk.name, disk.location, disk.transport, disk.sectors, disk.read_only),
                         ("vdb", "pci 0000:00:05.0", "pci-legacy", 24576, False))
        self.assertEqual(blk.disk_problems([disk], {"scratch1": {"queue_size": 16}}),
                         ["vdb (scratch1): queue_size=256, expected 16"])
        self.assertEqual(blk.disk_problems([disk], {"scratch1": {"features_absent": ("BLK_FLUSH",)}}),
                         ["vdb (scratch1): features include ['BLK_FLUSH']"])


if __name__ == "__main__":
    unittest.main()
