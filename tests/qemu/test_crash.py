"""Unit tests for the crash-* check (tests/qemu/scenarios_crash.py): no QEMU."""

from __future__ import annotations

import unittest

from qemu import scenarios_crash as sc


def record(n: int) -> bytes:
    body = sc.MAGIC + n.to_bytes(8, "little") + bytes((n * 7 + i) & 0xFF for i in range(488))
    return body + sc.fnv1a(body).to_bytes(8, "little")


def image(records: int, size_sectors: int = 64) -> bytearray:
    data = bytearray(size_sectors * sc.SECTOR)
    for n in range(records):
        data[n * sc.SECTOR:(n + 1) * sc.SECTOR] = record(n)
    return data


LOG = "crash: writing records to vda (scratch0), 8 per commit at most\ncrash: committed 0\ncrash: committed 2\n"


class CheckRecords(unittest.TestCase):
    def test_fnv1a_known_value(self) -> None:
        self.assertEqual(sc.fnv1a(b""), 0xCBF29CE484222325)
        self.assertEqual(sc.fnv1a(b"a"), 0xAF63DC4C8601EC8C)

    def test_every_committed_record_intact_passes(self) -> None:
        self.assertEqual(sc.check_records(bytes(image(3)), LOG), (2, []))

    def test_records_after_the_last_commit_may_be_anything(self) -> None:
        data = image(5)
        data[4 * sc.SECTOR] ^= 0xFF
        self.assertEqual(sc.check_records(bytes(data), LOG), (2, []))

    def test_a_lost_committed_record_fails(self) -> None:
        last, problems = sc.check_records(bytes(image(2)), LOG)
        self.assertEqual(last, 2)
        self.assertEqual(len(problems), 1)
        self.assertIn("record 2 of 0..2", problems[0])

    def test_a_torn_committed_record_fails(self) -> None:
        data = image(3)
        data[sc.SECTOR + 100] ^= 1
        _, problems = sc.check_records(bytes(data), LOG)
        self.assertEqual(problems, ["record 1 of 0..2 committed: checksum mismatch"])

    def test_a_record_in_the_wrong_place_fails(self) -> None:
        data = image(3)
        data[0:sc.SECTOR] = record(1)
        _, problems = sc.check_records(bytes(data), LOG)
        self.assertEqual(problems, ["record 0 of 0..2 committed: holds record 1"])

    def test_no_commit_or_a_failed_workload_fails(self) -> None:
        self.assertEqual(sc.check_records(bytes(image(0)), "crash: writing records to vda\n")[0], -1)
        _, problems = sc.check_records(bytes(image(0)), "crash: FAILED: no writable scratch disk\n")
        self.assertEqual(problems, ["crash: FAILED: no writable scratch disk"])

    def test_a_line_cut_by_the_kill_does_not_raise_the_count(self) -> None:
        # "crash: committed 12" cut to "...committed 1": smaller, never larger.
        self.assertEqual(sc.check_records(bytes(image(3)), LOG + "crash: committed 1")[0], 2)


if __name__ == "__main__":
    unittest.main()
