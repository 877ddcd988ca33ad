"""Unit tests of the scenario harness itself: it must be able to say FAIL.

Run from `tests/`: `python3 -m unittest qemu.test_harness` (`x.py test`
does, as the `harness-unit` step). The runner tests use a small Python
program in place of QEMU that writes a "serial log" and exits with a chosen
status, so they take well under a second and need no kernel.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

from . import harness, scenarios
from . import machine as qm
from .harness import KILLED, TIMEOUT, Scenario, evaluate

GOOD_SELFTEST_LOG = textwrap.dedent(
    """\
    kernel: booting (PVH) on q35
    [   0.000100] INFO kernel: hello
    selftest: PASS cpu::idt_loaded
    selftest: PASS memory::frames
    selftest: 2 passed, 0 failed
    """
)


def selftest_scenario(**changes) -> Scenario:
    base = dict(
        name="unit",
        expect_status=33,
        expect_in_order=scenarios.SELFTEST_OK,
        check=scenarios.selftest_summary_consistent,
    )
    base.update(changes)
    return Scenario(**base)


def fake_qemu(script: str):
    """A `Scenario.command` running `script` (Python) with the log path as argv[1]."""

    def command(ctx: harness.RunContext) -> list[str]:
        return [sys.executable, "-c", textwrap.dedent(script), str(ctx.log)]

    return command


class EvaluateTest(unittest.TestCase):
    def test_good_log_and_status_pass(self):
        self.assertEqual(evaluate(selftest_scenario(), 33, GOOD_SELFTEST_LOG), [])

    def test_wrong_status_fails(self):
        problems = evaluate(selftest_scenario(), 35, GOOD_SELFTEST_LOG)
        self.assertEqual(problems, ["QEMU exit status 35, expected 33"])

    def test_timeout_fails(self):
        problems = evaluate(selftest_scenario(), TIMEOUT, GOOD_SELFTEST_LOG)
        self.assertEqual(problems, ["timed out after 30 s"])

    def test_out_of_order_fails(self):
        swapped = "selftest: PASS a\nkernel: booting (PVH)\nselftest: 1 passed, 0 failed\n"
        problems = evaluate(selftest_scenario(), 33, swapped)
        self.assertEqual(len(problems), 1)
        self.assertIn("missing (in order, after line 2)", problems[0])
        self.assertIn("selftest: PASS", problems[0])

    def test_missing_anywhere_fails(self):
        scenario = selftest_scenario(expect_anywhere=[r"^virtio: blk "])
        problems = evaluate(scenario, 33, GOOD_SELFTEST_LOG)
        self.assertEqual(problems, ["missing: /^virtio: blk /"])

    def test_forbidden_line_fails_with_line_number(self):
        log = GOOD_SELFTEST_LOG.replace("selftest: PASS memory::frames", "selftest: FAIL memory::frames: lost")
        problems = evaluate(selftest_scenario(), 33, log)
        self.assertEqual(problems, ["forbidden /^selftest: FAIL / at line 4: selftest: FAIL memory::frames: lost"])

    def test_carriage_returns_are_ignored(self):
        self.assertEqual(evaluate(selftest_scenario(), 33, GOOD_SELFTEST_LOG.replace("\n", "\r\n")), [])

    def test_summary_consistency_check(self):
        outcome = harness.Outcome(selftest_scenario(), harness.qm.choose_accel("tcg"))
        outcome.log_text = GOOD_SELFTEST_LOG.replace("2 passed", "3 passed")
        self.assertEqual(
            list(scenarios.selftest_summary_consistent(outcome)),
            ["summary says 3 passed, log has 2 PASS lines"],
        )
        outcome.log_text = GOOD_SELFTEST_LOG + "late line\n"
        self.assertEqual(
            list(scenarios.selftest_summary_consistent(outcome)),
            ["last line is not the self-test summary: 'late line'"],
        )


class RunnerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.build = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def run_one(self, scenario: Scenario) -> harness.Outcome:
        return harness.run_scenario(scenario, Path("/nonexistent/kernel"), self.build)

    def test_passing_run_is_timed_and_logged(self):
        scenario = selftest_scenario(
            name="fake-pass",
            command=fake_qemu(
                f"""
                import sys, time
                with open(sys.argv[1], "w") as log:
                    for line in {GOOD_SELFTEST_LOG.splitlines()!r}:
                        log.write(line + "\\n"); log.flush(); time.sleep(0.05)
                sys.exit(33)
                """
            ),
        )
        outcome = self.run_one(scenario)
        self.assertEqual(outcome.problems, [])
        self.assertEqual(outcome.status, 33)
        self.assertEqual(outcome.log_text, GOOD_SELFTEST_LOG)
        self.assertEqual(outcome.log_path, self.build / "qemu-logs" / "fake-pass.log")
        self.assertIsNotNone(outcome.first_line_s)
        self.assertIsNotNone(outcome.selftest_done_s)
        # Four 50 ms pauses lie between the first and the last line.
        self.assertGreater(outcome.selftest_done_s - outcome.first_line_s, 0.15)

    def test_failing_check_fails_the_scenario(self):
        def always_unhappy(outcome):
            return [f"disk image differs at byte {len(outcome.log_text)}"]

        scenario = selftest_scenario(
            name="fake-check",
            check=always_unhappy,
            command=fake_qemu(
                f"""
                import sys
                open(sys.argv[1], "w").write({GOOD_SELFTEST_LOG!r})
                sys.exit(33)
                """
            ),
        )
        outcome = self.run_one(scenario)
        self.assertFalse(outcome.passed)
        expected = f"check always_unhappy: disk image differs at byte {len(GOOD_SELFTEST_LOG)}"
        self.assertEqual(outcome.problems, [expected])
        report = harness.failure_report(outcome)
        self.assertIn("selftest: 2 passed, 0 failed", report)

    def test_timeout_kills_and_reports_last_lines(self):
        scenario = selftest_scenario(
            name="fake-hang",
            timeout_s=0.5,
            command=fake_qemu(
                """
                import sys, time
                with open(sys.argv[1], "w") as log:
                    log.write("kernel: booting (PVH)\\nstuck here\\n"); log.flush()
                    time.sleep(60)
                """
            ),
        )
        outcome = self.run_one(scenario)
        self.assertEqual(outcome.status, TIMEOUT)
        self.assertLess(outcome.wall_s, 5)
        self.assertIn("timed out after 0.5 s", outcome.problems)
        self.assertIn("stuck here", harness.failure_report(outcome))

    def test_stop_on_kills_and_counts_as_expected_status(self):
        scenario = Scenario(
            name="fake-ready",
            expect_status=KILLED,
            stop_on=r"^kernel: ready",
            expect_in_order=[scenarios.BOOT_BANNER, r"^kernel: ready"],
            command=fake_qemu(
                """
                import sys, time
                with open(sys.argv[1], "w") as log:
                    log.write("kernel: booting (PVH)\\nkernel: ready\\n"); log.flush()
                    time.sleep(60)
                """
            ),
        )
        outcome = self.run_one(scenario)
        self.assertEqual(outcome.problems, [])
        self.assertEqual(outcome.status, KILLED)
        self.assertLess(outcome.wall_s, 5)

    def test_stop_on_is_timed_after_the_first_line(self):
        scenario = Scenario(
            name="fake-ready-later",
            expect_status=KILLED,
            stop_on=r"^kernel: ready",
            poll_interval_s=0.001,
            command=fake_qemu(
                """
                import sys, time
                with open(sys.argv[1], "w") as log:
                    log.write("kernel: booting (PVH)\\n"); log.flush()
                    time.sleep(0.3)
                    log.write("kernel: ready\\n"); log.flush()
                    time.sleep(60)
                """
            ),
        )
        outcome = self.run_one(scenario)
        self.assertEqual(outcome.problems, [])
        self.assertIsNotNone(outcome.first_line_s)
        self.assertIsNotNone(outcome.stop_on_s)
        self.assertGreaterEqual(outcome.stop_on_s - outcome.first_line_s, 0.25)
        self.assertLess(outcome.stop_on_s - outcome.first_line_s, 3)
        if Path("/proc/self/task").exists():
            self.assertIsNotNone(outcome.first_line_cpu_s)
            self.assertIsNotNone(outcome.stop_on_cpu_s)
            self.assertGreaterEqual(outcome.stop_on_cpu_s, outcome.first_line_cpu_s)

    def test_a_host_without_what_the_scenario_requires_skips_it(self):
        started = []
        scenario = selftest_scenario(
            name="fake-skip",
            command=lambda ctx: started.append(ctx) or ["false"],
            requires=lambda: "no network namespaces here",
        )
        outcome = self.run_one(scenario)
        self.assertEqual(outcome.status, harness.SKIPPED)
        self.assertTrue(outcome.skipped and outcome.passed)
        self.assertEqual(outcome.note, "skipped: no network namespaces here")
        self.assertEqual(started, [], "nothing was set up or started")
        self.assertEqual(harness.describe(outcome), "SKIP fake-skip: no network namespaces here")

    def test_a_host_with_what_the_scenario_requires_runs_it(self):
        scenario = selftest_scenario(
            name="fake-not-skipped",
            command=fake_qemu("import sys; sys.exit(33)"),
            requires=lambda: None,
        )
        outcome = self.run_one(scenario)
        self.assertFalse(outcome.skipped)
        self.assertEqual(outcome.status, 33)

    def test_a_wrapped_boot_runs_qemu_under_the_wrapper(self):
        ctx = harness.RunContext("wrapped", Path("/k.elf"), Path("/w"), Path("/w/log"))
        scenario = Scenario(name="wrapped", wrap=lambda c: ["ip", "netns", "exec", c.name])
        command = harness.build_command(scenario, ctx, qm.AccelChoice("tcg", "tcg", "test"))
        self.assertEqual(command[:4], ["ip", "netns", "exec", "wrapped"])
        self.assertEqual(command[4], qm.QEMU)
        self.assertIn("file:/w/log", command)

    def test_missing_program_is_reported(self):
        scenario = selftest_scenario(name="fake-missing", command=lambda ctx: ["/nonexistent/qemu"])
        outcome = self.run_one(scenario)
        self.assertEqual(outcome.status, harness.NOT_STARTED)
        self.assertFalse(outcome.passed)

    def test_files_are_created_before_start(self):
        scenario = selftest_scenario(
            name="fake-files",
            files={"disk.img": scenarios.raw_image(4096)},
            command=fake_qemu(
                f"""
                import os, sys
                size = os.path.getsize("disk.img")  # cwd is the work directory
                open(sys.argv[1], "w").write({GOOD_SELFTEST_LOG!r})
                sys.exit(33 if size == 4096 else 1)
                """
            ),
        )
        outcome = self.run_one(scenario)
        self.assertEqual(outcome.problems, [])
        self.assertTrue((self.build / "qemu-work" / "fake-files" / "disk.img").exists())



def status_trace(*writes: tuple[int, str, int]) -> str:
    """A `-trace virtio_set_status -msg timestamp=on` log of (thread, vdev, value) writes."""
    return "".join(
        f"{thread}@1796654772.{i:06d}:virtio_set_status vdev {vdev} val {value}\n"
        for i, (thread, vdev, value) in enumerate(writes)
    )


#: QEMU's machine reset: two zeros per device from its main thread (100).
MACHINE_RESET = [(100, dev, 0) for dev in ("0xa", "0xb")] * 2
#: One bring-up on the vCPU thread (101): enumeration's zero, the reset
#: written twice by virtio-pci, then ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK.
ONCE = [(101, "0xa", v) for v in (0, 0, 0, 1, 3, 11, 15)] + [(101, "0xb", v) for v in (0, 0, 0, 1, 3, 11, 15)]


class StatusTraceTest(unittest.TestCase):
    """The bringup-once-* scenarios' reading of QEMU's status trace."""

    def test_one_bring_up_each_passes(self):
        trace = status_trace(*MACHINE_RESET, *ONCE)
        self.assertEqual(scenarios.guest_status_writes(trace), {"0xa": [0, 1, 3, 11, 15], "0xb": [0, 1, 3, 11, 15]})
        self.assertEqual(scenarios.status_write_problems(trace, 2), [])

    def test_a_second_bring_up_fails(self):
        # What the kernel did before each device had one owner: a generic
        # bring-up at probe time, then the driver's.
        again = [(101, "0xa", v) for v in (0, 0, 1, 3, 11, 15)]
        problems = scenarios.status_write_problems(status_trace(*MACHINE_RESET, *ONCE, *again), 2)
        self.assertEqual(len(problems), 1)
        self.assertIn("0xa", problems[0])

    def test_a_repeated_driver_ok_fails(self):
        problems = scenarios.status_write_problems(status_trace(*MACHINE_RESET, *ONCE, (101, "0xb", 15)), 2)
        self.assertEqual(len(problems), 1)
        self.assertIn("0xb", problems[0])

    def test_legacy_bring_up_has_no_features_ok(self):
        legacy = [(101, "0xa", v) for v in (0, 1, 3, 7)]
        trace = status_trace(*MACHINE_RESET[:1], *legacy)
        self.assertEqual(scenarios.status_write_problems(trace, 1, scenarios.ONE_LEGACY_BRING_UP), [])
        self.assertNotEqual(scenarios.status_write_problems(trace, 1), [])

    def test_no_reset_or_missing_device_fails(self):
        no_reset = [(101, "0xa", v) for v in (1, 3, 11, 15)]
        self.assertNotEqual(scenarios.status_write_problems(status_trace(*MACHINE_RESET[:1], *no_reset), 1), [])
        # The second device was never brought up: only QEMU's zeros.
        self.assertNotEqual(scenarios.status_write_problems(status_trace(*MACHINE_RESET, *ONCE[:7]), 2), [])
        self.assertNotEqual(scenarios.status_write_problems("", 3), [])


if __name__ == "__main__":
    unittest.main()
