"""Unit tests for tests/qemu/fuzz.py (`./x.py fuzz`): no fuzzing, no nightly."""

from __future__ import annotations

import re
import unittest

from qemu import fuzz


class ParseStats(unittest.TestCase):
    def test_final_line_gives_runs_and_seconds(self) -> None:
        output = "#1024\tpulse  cov: 10 ft: 12 corp: 3/40b exec/s: 512 rss: 40Mb\n" \
                 "Done 245706 runs in 31 second(s)\nstat::number_of_executed_units: 245706\n"
        self.assertEqual(fuzz.parse_stats(output), (245706, 31.0))

    def test_a_crash_still_counts_what_ran(self) -> None:
        output = "#4096\tNEW    cov: 10 ft: 12\n#8192\tpulse  cov: 10\n==123== ERROR: libFuzzer: deadly signal\n"
        self.assertEqual(fuzz.parse_stats(output), (8192, None))

    def test_nothing_ran(self) -> None:
        self.assertEqual(fuzz.parse_stats("error: could not compile\n"), (0, None))


class Targets(unittest.TestCase):
    def test_every_shim_is_a_target_of_the_stable_crate_and_back(self) -> None:
        shims = set(fuzz.targets())
        table = (fuzz.REPO / "tests" / "src" / "fuzz" / "mod.rs").read_text()
        stable = set(re.findall(r'^\s*\("(\w+)", \w+\),', table, re.MULTILINE))
        self.assertTrue(stable, "no TARGETS table found")
        self.assertEqual(shims, stable)
        for name in shims:
            self.assertTrue((fuzz.FUZZ_DIR / "fuzz_targets" / f"{name}.rs").is_file(), name)


if __name__ == "__main__":
    unittest.main()
