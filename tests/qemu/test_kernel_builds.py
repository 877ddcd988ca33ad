"""Unit tests of `kernel_builds.py`: which build a boot needs, and the
production-ELF symbol check (it must be able to fail).

Run from `tests/`: `python3 -m unittest qemu.test_kernel_builds` (`x.py test`
does, in the `harness-unit` step).
"""

from __future__ import annotations

import unittest

from . import harness, scenarios
from .kernel_builds import elf_name, features_for_append, forbidden_symbols, normalize

CLEAN = """\
0000000000101000 T kernel::kernel_main
0000000000102000 t kernel::block::init
0000000000103000 t <drivers::blk::BlkDevice<H,T>>::submit_read
0000000000104000 t kernel::virtio::irq::halt_count
"""


class FeaturesForAppend(unittest.TestCase):
    def test_a_normal_boot_needs_no_feature(self) -> None:
        self.assertEqual(features_for_append(""), ())
        self.assertEqual(features_for_append("log=trace virtio.ring=packed net.qsize=8"), ())

    def test_selftest_and_fail_need_selftest(self) -> None:
        self.assertEqual(features_for_append("mode=selftest expect.virtio=none"), ("selftest",))
        self.assertEqual(features_for_append("fail=panic"), ("selftest",))

    def test_bench_needs_bench(self) -> None:
        self.assertEqual(features_for_append("mode=bench bench=net,console"), ("bench",))

    def test_a_later_mode_word_still_counts(self) -> None:
        # The kernel takes the last mode=; x.py builds for every one named.
        self.assertEqual(features_for_append("mode=bench mode=selftest"), ("bench", "selftest"))

    def test_similar_words_do_not_count(self) -> None:
        self.assertEqual(features_for_append("mode=selftests xmode=bench bench=blk"), ())


class ElfNames(unittest.TestCase):
    def test_each_build_has_its_own_path(self) -> None:
        names = {elf_name(f, r) for f in [(), ("selftest",), ("bench",)] for r in (False, True)}
        self.assertEqual(len(names), 6)
        self.assertEqual(elf_name((), False), "kernel.elf")
        self.assertEqual(elf_name(("selftest",), False), "kernel-selftest.elf")
        self.assertEqual(elf_name(("bench",), True), "kernel-bench-release.elf")

    def test_unknown_features_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            normalize(["selftests"])


class ProductionSymbols(unittest.TestCase):
    def test_a_clean_listing_passes(self) -> None:
        self.assertEqual(forbidden_symbols(CLEAN), [])

    def test_each_kind_of_test_or_bench_code_is_caught(self) -> None:
        for symbol in (
            "<virtio_drivers::transport::pci::PciTransport as virtio_drivers::transport::Transport>::notify",
            "zerocopy::util::round_down",
            "<kernel::peer::pci::KernelCam as Foo>::write_word",
            "kernel::bench::run",
            "kernel::block::bench::run_workload",
            "kernel::net::bench::run",
            "kernel::selftest::run_all",
            "core::ptr::drop_in_place<kernel::selftest_api::SelfTest>",
            "kernel::interrupts::selftests::test_timer",
            "kernel::clock::selftests::selftests",
            "kernel::virtio::irq_selftests::test_msix_readback",
            "<kernel::virtio::test_bringup::TestDevice as Drop>::drop",
        ):
            with self.subTest(symbol=symbol):
                problems = forbidden_symbols(CLEAN + f"0000000000105000 t {symbol}\n")
                self.assertEqual(len(problems), 1, problems)
                self.assertIn(symbol, problems[0])

    def test_an_empty_or_stripped_listing_fails(self) -> None:
        self.assertTrue(forbidden_symbols(""))
        self.assertTrue(forbidden_symbols("0000000000101000 T _start\n"))


class ScenarioKernels(unittest.TestCase):
    def test_every_scenario_names_a_build_that_can_run_it(self) -> None:
        # Except those that boot a build without the mode on purpose.
        for scenario in (s for s in scenarios.SCENARIOS if not s.name.startswith("mode-not-built")):
            with self.subTest(scenario=scenario.name):
                features = harness.kernel_features(scenario)
                for needed in features_for_append(scenario.append):
                    self.assertIn(needed, features)

    def test_the_not_built_scenarios_boot_the_production_kernel(self) -> None:
        refusing = [s for s in scenarios.SCENARIOS if s.name.startswith("mode-not-built")]
        self.assertTrue(refusing)
        for scenario in refusing:
            self.assertEqual(harness.kernel_features(scenario), ())


if __name__ == "__main__":
    unittest.main()
