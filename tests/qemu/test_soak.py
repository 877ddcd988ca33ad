"""Unit tests of the soak's host-side verdicts (tests/qemu/soak.py) and of the
fault scenarios' definitions (tests/qemu/scenarios_faults.py)."""

from __future__ import annotations

import unittest

from . import scenarios  # noqa: F401  (first: scenarios_faults builds on it)
from . import blk, scenarios_faults, soak

LOG = """\
soak: start disk=vda serial=scratch-soak0 seconds=20
soak: t=0 rounds=1 bytes=1024 errors=0 heap_used=1000 frames_free=500
blk: wrote serial=scratch-soak0 sector=64 count=1 seed=0x1 crc32=0x00000000
soak: t=1 rounds=40 bytes=99999 errors=0 heap_used=1000 frames_free=500 sockets=0 held=0 queued=0
soak: t=30 rounds=80 bytes=199999 errors=2 heap_used=99999 frames_free=499
"""


class CountersTest(unittest.TestCase):
    def test_parses_every_line(self) -> None:
        lines = soak.Counters.all_in(LOG)
        self.assertEqual([c.t for c in lines], [0, 1, 30])
        self.assertEqual(lines[2].errors, 2)
        self.assertEqual(lines[2].heap, 99999)
        self.assertEqual(lines[2].frames, 499)
        self.assertLess(lines[0].offset, lines[1].offset)
        self.assertEqual((lines[0].sockets, lines[1].sockets), (None, 0))

    def test_services_must_be_empty_at_the_end(self) -> None:
        base = soak.Counters.all_in(LOG)[1]
        busy = soak.Counters(t=9, rounds=1, errors=0, heap=1000, frames=500, sockets=2, held=0, queued=10)
        self.assertEqual(soak.growth_problems(base, busy),
                         ["the services' sockets is 2 with no client left (t=9)",
                          "the services' queued is 10 with no client left (t=9)"])

    def test_growth_is_reported(self) -> None:
        base, _, end = soak.Counters.all_in(LOG)
        problems = soak.growth_problems(base, end)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("heap in use grew from 1000 to 99999", problems[0])
        self.assertIn("free frames fell from 500 to 499", problems[1])
        self.assertEqual(soak.growth_problems(base, base), [])
        # The heap's own jitter is allowed, frames are exact.
        jitter = soak.Counters(t=40, rounds=90, errors=0, heap=1000 + soak.HEAP_SLACK, frames=500)
        self.assertEqual(soak.growth_problems(base, jitter), [])

    def test_a_gap_is_a_stall(self) -> None:
        lines = soak.Counters.all_in(LOG)
        self.assertEqual(soak.stall_problems(lines[:2]), [])
        self.assertEqual(soak.stall_problems(lines), ["no counters line between t=1 and t=30"])


class StillVisibleTest(unittest.TestCase):
    def test_only_writes_not_covered_later_are_kept(self) -> None:
        def wrote(sector: int, count: int) -> blk.Op:
            return blk.Op("wrote", "s", sector, count, 1, 0)

        operations = [wrote(64, 64), wrote(64, 8), wrote(128, 1), wrote(64, 64), wrote(64, 3)]
        self.assertEqual(soak.still_visible(operations), [wrote(128, 1), wrote(64, 64), wrote(64, 3)])


class FaultScenariosTest(unittest.TestCase):
    def test_every_injected_fault_is_expected_by_the_guest(self) -> None:
        scenario = scenarios_faults.FAULTS_BLKDEBUG
        for entry in ("scratch-faults0:read:1000", "scratch-faults0:read-once:1100",
                      "scratch-faults0:write:3000", "scratch-faults0:write-once:3100",
                      "scratch-faults0:flush-once", "scratch-flushfail0:flush"):
            self.assertIn(entry, scenario.append)
        self.assertEqual(scenarios_faults.BLKDEBUG_FAULTS.count("[inject-error]"), 5)
        self.assertEqual(scenarios_faults.BLKDEBUG_FAULTS.count('once = "on"'), 3)

    def test_the_hang_scenario_talks_to_qemu(self) -> None:
        [hang] = [s for s in scenarios_faults.FAULT_SCENARIOS if s.name == "blk-fault-hang-qmp"]
        self.assertIsNotNone(hang.interact)
        self.assertIn("expect.blk.hang=scratch-hang0", hang.append)


if __name__ == "__main__":
    unittest.main()
