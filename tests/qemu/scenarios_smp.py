"""SMP scenarios: the application processors started, used and stopped (issue 22).

QEMU's `-smp N` is added after the harness's own `-smp 1` (the last one wins).
Under TCG QEMU runs each vCPU on a host thread of its own (MTTCG is the default
for x86 guests on x86 hosts), so 4 vCPUs share this host's 2 cores.

- `smp4-q35-devices`: q35 + SeaBIOS, 4 vCPUs, the standard devices: `cpus: 4
  online`, the whole self-test passes, including the SMP tests (every CPU runs a
  job and reports its own number and APIC ID, IPI round trips, a job sent from
  CPU 1 to CPU 0, each CPU's APIC timer, the shell's `cpus` table).
- `smp4-pc`: pc + qboot, 4 vCPUs, no devices: the same SMP tests.
- `smp1-q35`: the default single vCPU still says `cpus: 1 online`.
- `smp-silent-cpu`: 3 vCPUs, and the kernel is told (`smp.test_silent=2`, self-test
  build) not to send CPU 2 its start-up IPIs: the CPU is named as not answering,
  `cpus: 2 online`, and the boot and the self-test go on.
- `smp-slow-cpu`: 3 vCPUs, and CPU 1 (`smp.test_slow=1`, self-test build) holds
  the serial lock past the start-up timeout: it must be named as having run the
  trampoline without coming online, APIC ID 2 is not started (the trampoline may
  still be in use), `cpus: 1 online`, and the boot and the self-test go on
  (an INIT to the late CPU would leave the lock held and hang the next print).
- `smp-panic-all-cpus`: every CPU panics at the same moment (`fail=smp-panic`):
  exactly one `PANIC at` report comes out, status 37.
- `smp-pagefault-cpu1`: CPU 1 reads an unmapped address (`fail=smp-pagefault`):
  the exception report names `cpu=1`, status 39.
- `smp4-ready`: the production kernel with 4 vCPUs and the standard devices boots
  to `kernel: ready`.

The kernel side is kernel/src/smp/; the book chapter docs/13-other-cpus.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from . import machine as qm
from .harness import DEFAULT_FORBID, KILLED, Outcome, Scenario
from .scenarios import BOOT_BANNER, SELFTEST_OK, MiB, raw_image, selftest_summary_consistent, standard_devices

#: What the SMP self-tests print when they pass.
SMP_PASSES = [
    r"^selftest: PASS smp: every CPU runs a job and reports its own number and APIC ID$",
    r"^selftest: PASS smp: run_on_all runs a share on every CPU at the same time$",
    r"^selftest: PASS smp: IPI round trips to every other CPU$",
    r"^selftest: PASS smp: a job sent from another CPU to CPU 0 runs on CPU 0$",
    r"^selftest: PASS smp: each CPU's local APIC timer fires on that CPU$",
    r"^selftest: PASS smp: an interrupt addressed to a CPU.s APIC ID runs its handler on that CPU$",
    r"^selftest: PASS smp: the shell's `cpus` lists every online CPU with its APIC ID and counts$",
    r"^selftest: PASS smp: every CPU runs with caching enabled \(CR0.CD and CR0.NW clear\)$",
    r"^selftest: PASS smp: a wait inside CPU 0's work IPI handler returns an error, not a hang$",
]


def smp(count: int) -> list[str]:
    """QEMU arguments for `count` vCPUs."""
    return ["-smp", str(count)]


def one_panic_report(outcome: Outcome) -> Iterable[str]:
    """Exactly one panic report, naming one CPU of 4, and no second report or nested panic."""
    reports = re.findall(r"^PANIC at ", outcome.log_text, re.MULTILINE)
    problems = []
    if len(reports) != 1:
        problems.append(f"{len(reports)} `PANIC at` lines, expected exactly 1")
    if re.search(r"^  on CPU [0-3] of 4 online$", outcome.log_text, re.MULTILINE) is None:
        problems.append("no `on CPU n of 4 online` line")
    return problems


def smp_selftest(name: str, machine: str, firmware: str, cpus: int, with_devices: bool) -> Scenario:
    """`mode=selftest` with `cpus` vCPUs, all of which must come up."""
    devices = standard_devices(machine) if with_devices else (lambda ctx: [])
    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel="tcg",
        devices=lambda ctx: devices(ctx) + smp(cpus),
        files={"scratch.img": raw_image(64 * MiB)} if with_devices else {},
        append=f"mode=selftest expect.cpus={cpus}",
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=[BOOT_BANNER, rf"^cpus: {cpus} online$", *SELFTEST_OK[1:]],
        expect_anywhere=SMP_PASSES,
        check=selftest_summary_consistent,
        timeout_s=90.0 if with_devices else 30.0,
    )


SMP_SCENARIOS: list[Scenario] = [
    smp_selftest("smp4-q35-devices", "q35", "seabios", 4, with_devices=True),
    smp_selftest("smp4-pc", "pc", "qboot", 4, with_devices=False),
    Scenario(
        name="smp1-q35",
        machine="q35",
        firmware="qboot",
        accel="tcg",
        append="mode=selftest expect.cpus=1",
        expect_in_order=[BOOT_BANNER, r"^cpus: 1 online$", *SELFTEST_OK[1:]],
        check=selftest_summary_consistent,
    ),
    Scenario(
        name="smp-silent-cpu",
        machine="q35",
        firmware="qboot",
        accel="tcg",
        devices=lambda ctx: smp(3),
        append="mode=selftest smp.test_silent=2 expect.cpus=2",
        expect_in_order=[
            BOOT_BANNER,
            r"^cpus: the CPU with local APIC ID 2 did not come up: did not answer within 1000 ms ",
            r"^cpus: 2 online, 1 of 3 did not come up$",
            *SELFTEST_OK[1:],
        ],
        expect_anywhere=SMP_PASSES[:2],
        check=selftest_summary_consistent,
    ),
    Scenario(
        name="smp-slow-cpu",
        machine="q35",
        firmware="qboot",
        accel="tcg",
        devices=lambda ctx: smp(3),
        append="mode=selftest smp.test_slow=1 expect.cpus=1",
        expect_in_order=[
            BOOT_BANNER,
            r"^cpus: the CPU with local APIC ID 1 did not come up: did not answer within 1000 ms "
            r"\(it ran the trampoline but did not come online; it parks itself\)$",
            r"^cpus: the CPU with local APIC ID 2 did not come up: not started: ",
            r"^cpus: 1 online, 2 of 3 did not come up$",
            *SELFTEST_OK[1:],
        ],
        expect_anywhere=SMP_PASSES[:2],
        check=selftest_summary_consistent,
    ),
    Scenario(
        name="smp-panic-all-cpus",
        machine="q35",
        firmware="qboot",
        accel="tcg",
        devices=lambda ctx: smp(4),
        append="fail=smp-panic",
        expect_status=qm.EXIT_PANIC,
        expect_in_order=[
            BOOT_BANNER,
            r"^cpus: 4 online$",
            r"^PANIC at \S+:\d+: deliberate panic on CPU [0-3] \(fail=smp-panic\)$",
            r"^  backtrace: 0x[0-9a-f]+",
        ],
        check=one_panic_report,
        forbid=[r"^EXCEPTION ", r"^selftest: ", r"PANIC while panicking", r"CPUs still running"],
    ),
    Scenario(
        name="smp-pagefault-cpu1",
        machine="pc",
        firmware="qboot",
        accel="tcg",
        devices=lambda ctx: smp(2),
        append="fail=smp-pagefault log=info",
        expect_status=qm.EXIT_EXCEPTION,
        expect_in_order=[
            BOOT_BANNER,
            r"^cpus: 2 online$",
            r"fail=smp-pagefault: CPU 1 reads 0x[0-9a-f]+",
            r"^EXCEPTION 14 #PF \(page fault\) error=0x[0-9a-f]+ rip=0x[0-9a-f]+ ",
            r"^\s+cr2=0x7e57dead0000 \(not-present page, read, supervisor mode, data access\)",
            r"^\s+cr0=0x[0-9a-f]+ cr3=0x[0-9a-f]+ cr4=0x[0-9a-f]+ cpu=1$",
        ],
        forbid=[r"^PANIC at ", r"^selftest: ", r"^kernel: ready", r"CPUs still running"],
    ),
    Scenario(
        name="smp4-ready",
        machine="q35",
        firmware="qboot",
        accel="tcg",
        devices=lambda ctx: standard_devices("q35")(ctx) + smp(4),
        files={"scratch.img": raw_image(64 * MiB)},
        append="",
        expect_status=KILLED,
        stop_on=r"^kernel: ready$",
        expect_in_order=[BOOT_BANNER, r"^cpus: 4 online$", r"^kernel: ready$"],
        forbid=[*DEFAULT_FORBID, r"^selftest: ", r"did not come up"],
    ),
]  # fmt: skip
