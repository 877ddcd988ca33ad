"""The QEMU scenarios that `x.py test` runs.

Each entry in `SCENARIOS` is one boot of the kernel ELF. The matrix covers
every machine (pc, q35, microvm), both accelerators (KVM, TCG) and both
firmwares for pc/q35 (SeaBIOS, qboot) at least once while staying short:
SeaBIOS costs 3-4 s per boot under nested KVM, so it runs under TCG, where it
is fast. A plain `qemu-system-x86_64 -kernel` boot proves the ELF needs no
special flags, and the two deliberate failures prove that the harness sees a
panic and an exception.

Adding a scenario is a few lines: see README.md, "Adding a QEMU scenario".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from . import machine as qm
from .harness import DEFAULT_FORBID, KILLED, SELFTEST_SUMMARY, Outcome, RunContext, Scenario  # noqa: F401

MiB = 1024 * 1024

#: First line of every boot (kernel API contract).
BOOT_BANNER = r"^kernel: booting \(PVH\)"
#: What a successful self-test run prints, in this order.
SELFTEST_OK = [BOOT_BANNER, r"^selftest: PASS ", r"^selftest: [1-9]\d* passed, 0 failed$"]


def raw_image(size: int) -> Callable[[Path], None]:
    """A `files` generator: a sparse raw disk image of `size` bytes."""

    def make(path: Path) -> None:
        qm.create_raw_image(path, size)

    make.__name__ = f"raw_image_{size}"
    return make


def scratch_disk(ctx: RunContext, machine: str, extra: str = "") -> list[str]:
    """`scratch.img` from the work directory as a writable virtio-blk disk."""
    args = qm.scratch_disk_args(machine, ctx.file("scratch.img"))
    args[-1] += extra
    return args


def standard_devices(machine: str) -> Callable[[RunContext], list[str]]:
    """The devices `x.py run` attaches: scratch disk, user-mode net, console.

    Here the console goes to `console.log` in the work directory.
    """

    def devices(ctx: RunContext) -> list[str]:
        args = scratch_disk(ctx, machine)
        args += qm.user_net_args(machine)
        args += ["-chardev", f"file,id=console0,path={ctx.file('console.log')}"]
        args += qm.console_args(machine, "console0")
        return args

    return devices


def selftest_summary_consistent(outcome: Outcome) -> Iterable[str]:
    """The summary is the last line and its counts match the PASS/FAIL lines."""
    lines = [line for line in outcome.log_text.splitlines() if line.strip()]
    if not lines:
        return ["the serial log is empty"]
    summary = SELFTEST_SUMMARY.match(lines[-1])
    if summary is None:
        return [f"last line is not the self-test summary: {lines[-1]!r}"]
    passed = sum(1 for line in lines if line.startswith("selftest: PASS "))
    failed = sum(1 for line in lines if line.startswith("selftest: FAIL "))
    problems = []
    if int(summary.group(1)) != passed:
        problems.append(f"summary says {summary.group(1)} passed, log has {passed} PASS lines")
    if int(summary.group(2)) != failed:
        problems.append(f"summary says {summary.group(2)} failed, log has {failed} FAIL lines")
    return problems


def selftest(machine: str, firmware: str | None, accel: str, with_devices: bool = False) -> Scenario:
    """`mode=selftest` on one machine/firmware/accelerator: must exit with 33."""
    name = "-".join(["selftest", machine] + ([firmware] if firmware else []) + [accel])
    if with_devices:
        name += "-devices"
    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel=accel,
        devices=standard_devices(machine) if with_devices else (),
        files={"scratch.img": raw_image(64 * MiB)} if with_devices else {},
        append="mode=selftest",
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=SELFTEST_OK,
        check=selftest_summary_consistent,
    )


#: `fail=pagefault` names the unmapped address it is about to read.
PAGEFAULT_ANNOUNCEMENT = r"fail=pagefault: reading (0x[0-9a-f]+)"


def cr2_is_the_announced_address(outcome: Outcome) -> Iterable[str]:
    """The page-fault report's cr2 is the address `fail=pagefault` read."""
    announced = re.search(PAGEFAULT_ANNOUNCEMENT, outcome.log_text)
    reported = re.search(r"^\s+cr2=(0x[0-9a-f]+)", outcome.log_text, re.MULTILINE)
    if announced is None or reported is None:
        return ["no announced address or no cr2 line to compare"]
    if int(announced.group(1), 16) != int(reported.group(1), 16):
        return [f"cr2={reported.group(1)} but the kernel read {announced.group(1)}"]
    return []


def plain_boot_command(ctx: RunContext) -> list[str]:
    """Nothing but the kernel: no isa-debug-exit, no -append, QEMU's defaults."""
    return [qm.QEMU, "-kernel", str(ctx.kernel), "-display", "none", "-serial", f"file:{ctx.log}"]


SCENARIOS: list[Scenario] = [
    # KVM with qboot: the fast path `x.py run` uses, with its devices attached.
    selftest("q35", "qboot", "kvm", with_devices=True),
    selftest("pc", "qboot", "kvm"),
    selftest("microvm", None, "kvm", with_devices=True),
    # TCG: SeaBIOS (fast under TCG) on pc and q35, and microvm.
    selftest("pc", "seabios", "tcg", with_devices=True),
    selftest("q35", "seabios", "tcg"),
    selftest("microvm", None, "tcg"),
    Scenario(
        name="boot-plain",
        machine="pc",
        firmware="seabios",
        accel="tcg",
        command=plain_boot_command,
        append="",
        expect_status=KILLED,
        stop_on=r"^kernel: ready",
        expect_in_order=[BOOT_BANNER, r"^kernel: ready"],
        forbid=[r"^PANIC at ", r"^EXCEPTION ", r"^selftest: "],
    ),
    Scenario(
        name="fail-panic",
        machine="pc",
        firmware="qboot",
        accel="kvm",
        append="fail=panic",
        expect_status=qm.EXIT_PANIC,
        expect_in_order=[BOOT_BANNER, r"^PANIC at \S+:\d+: "],
        forbid=[r"^EXCEPTION ", r"^selftest: ", r"^kernel: ready"],
    ),
    Scenario(
        name="fail-pagefault",
        machine="q35",
        firmware="qboot",
        accel="kvm",
        append="fail=pagefault",
        expect_status=qm.EXIT_EXCEPTION,
        # The report format is documented in kernel/src/cpu/exceptions.rs.
        expect_in_order=[
            BOOT_BANNER,
            PAGEFAULT_ANNOUNCEMENT,
            r"^EXCEPTION 14 #PF \(page fault\) error=0x[0-9a-f]+ rip=0x[0-9a-f]+ ",
            r"^\s+cr2=0x[0-9a-f]+ \(not-present page, read, supervisor mode, data access\)",
            r"\brax=0x[0-9a-f]+",
            r"^\s+backtrace: 0x[0-9a-f]+",
        ],
        check=cr2_is_the_announced_address,
        forbid=[r"^PANIC at ", r"^selftest: ", r"^kernel: ready"],
    ),
]
