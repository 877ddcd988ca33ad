"""Unit tests of traces.py: cutting excerpts out of a log and seeing them drift."""

import tempfile
import unittest
from pathlib import Path

from book import traces

LOG = """\
kernel: booting (PVH) on q35
[   0.010000] TRACE drivers::queue::split: vq0: split ring, 4 descriptors at 0xe0000000000
[   0.020000] TRACE drivers::queue::split: vq0: request of 3 segment(s) as a direct chain
[   0.020100] TRACE drivers::transport::pci: pci 0000:00:03.0: notify
[   0.020200] TRACE drivers::queue::split: vq0: publish: avail.idx 0 -> 1 (1 new) in 12 us
[   0.030000] TRACE drivers::queue::split: vq0: used.idx = 1, consumed 0 -> 1
[   0.040000] TRACE drivers::queue::split: vq0: request of 3 segment(s) again
kernel: ready
"""

EXCERPT = traces.Excerpt(name="one", description="test", start=r"vq0: request of",
                         stop=r"used\.idx = 1", keep=r"vq0: ")


class TracesTest(unittest.TestCase):
    def test_extract_cuts_from_start_to_stop_keeping_matching_lines(self) -> None:
        self.assertEqual(traces.extract(LOG, EXCERPT), [
            "TRACE drivers::queue::split: vq0: request of 3 segment(s) as a direct chain",
            "TRACE drivers::queue::split: vq0: publish: avail.idx 0 -> 1 (1 new) in 12 us",
            "TRACE drivers::queue::split: vq0: used.idx = 1, consumed 0 -> 1",
        ])
        self.assertIsNone(traces.extract("kernel: ready\n", EXCERPT))

    def test_timing_dependent_lines_can_be_dropped(self) -> None:
        excerpt = traces.Excerpt(name="one", description="test", start=r"vq0: request of",
                                 stop=r"used\.idx = 1", keep=r"vq0: ", drop=r"publish:")
        lines = traces.extract(LOG, excerpt)
        self.assertEqual(len(lines), 2)
        self.assertFalse(any("publish" in line for line in lines))

    def test_addresses_and_times_do_not_count_as_drift(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            traces.write(LOG, [EXCERPT], Path(tmp))
            other = LOG.replace("0xe0000000000", "0xe0000004000").replace("12 us", "30 us")
            self.assertEqual(traces.drift(other, [EXCERPT], Path(tmp)), [])

    def test_index_movements_and_decisions_do(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            traces.write(LOG, [EXCERPT], Path(tmp))
            for before, after in (("avail.idx 0 -> 1", "avail.idx 0 -> 2"), ("3 segment", "2 segment"),
                                  ("consumed 0 -> 1", "consumed 1 -> 2")):
                with self.subTest(change=after):
                    problems = traces.drift(LOG.replace(before, after), [EXCERPT], Path(tmp))
                    self.assertEqual(len(problems), 1, problems)
                    self.assertIn(traces.REFRESH_COMMAND, problems[0])

    def test_missing_excerpts_are_problems(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.assertIn("missing", traces.drift(LOG, [EXCERPT], Path(tmp))[0])
            traces.write(LOG, [EXCERPT], Path(tmp))
            self.assertIn("no line matching", traces.drift("kernel: ready\n", [EXCERPT], Path(tmp))[0])

    def test_the_book_has_every_excerpt(self) -> None:
        for excerpt in traces.EXCERPTS:
            with self.subTest(excerpt=excerpt.name):
                self.assertIsNotNone(traces.stored(excerpt), f"docs/traces/{excerpt.name}.txt")
                included = any(f"traces/{excerpt.name}.txt" in p.read_text()
                               for p in (traces.REPO / "docs").glob("*.md"))
                self.assertTrue(included, f"no chapter includes traces/{excerpt.name}.txt")


if __name__ == "__main__":
    unittest.main()
