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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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


# ---------------------------------------------------------------- virtio probing
#
# Each scenario below attaches a set of virtio devices and tells the kernel,
# through `expect.virtio=`, exactly which (type, transport) pairs it must
# find; the in-guest self-tests fail on any difference, bring every device up,
# and make a round trip through a split ring on each blk device (GET_ID and
# sector 0, compared with the marker the scenario wrote into the image, named
# in `expect.blk.serial=`) and each console (one line out, checked here in the
# console's output file). The check below also reads the `virtio:` lines.

#: The `virtio:` line of a device that came up (README, "The stable contract").
VIRTIO_LINE = re.compile(
    r"^virtio: (?P<type>\S+) at (?P<location>pci \S+|mmio@0x[0-9a-f]+) "
    r"transport=(?P<transport>\S+) ring=(?P<ring>\S+) queues=(?P<queues>\d+) features=(?P<features>\S+)$",
    re.MULTILINE,
)
#: Queues the kernel's generic bring-up sets up per type (no device-specific features).
GENERIC_QUEUES = {"blk": 1, "net": 2, "console": 2}
MODERN_TRANSPORTS = ("pci-modern", "mmio-v2")


@dataclass(frozen=True)
class VirtioDev:
    """One virtio device of a probe scenario and the transport it must come up on."""

    kind: str  # "blk", "net" or "console"
    transport: str  # "pci-modern", "pci-legacy", "mmio-v1" or "mmio-v2"
    props: str = ""  # extra -device properties, e.g. ",disable-legacy=on" or ",bus=br0"


def probe_image(serial: str) -> Callable[[Path], None]:
    """A `files` generator: a 1 MiB disk whose sector 0 starts with `virtio-probe:<serial>\\n`."""

    def make(path: Path) -> None:
        qm.create_raw_image(path, 1 * MiB)
        with open(path, "r+b") as image:
            image.write(f"virtio-probe:{serial}\n".encode())

    make.__name__ = f"probe_image_{serial}"
    return make


def virtio_device_args(ctx: RunContext, machine: str, devs: Sequence[VirtioDev]) -> list[str]:
    """QEMU arguments for `devs`: disks `disk<i>.img` (serial `disk<i>`), user-mode
    NICs, and virtio-serial controllers with a console writing `console<i>.log`."""
    args: list[str] = []
    for i, dev in enumerate(devs):
        if dev.kind == "blk":
            args += ["-drive", f"if=none,id=d{i},format=raw,file={ctx.file(f'disk{i}.img')}"]
            blk = qm.virtio_device("virtio-blk", machine)
            args += ["-device", f"{blk},drive=d{i},serial=disk{i}{dev.props}"]
        elif dev.kind == "net":
            rom = ",romfile=" if machine != "microvm" else ""
            args += ["-netdev", f"user,id=n{i}"]
            args += ["-device", f"{qm.virtio_device('virtio-net', machine)},netdev=n{i}{rom}{dev.props}"]
        elif dev.kind == "console":
            args += ["-chardev", f"file,id=c{i},path={ctx.file(f'console{i}.log')}"]
            args += ["-device", f"{qm.virtio_device('virtio-serial', machine)},id=vser{i}{dev.props}"]
            args += ["-device", f"virtconsole,chardev=c{i},bus=vser{i}.0"]
        else:
            raise ValueError(f"unknown virtio device kind {dev.kind!r}")
    return args


def check_virtio_lines(devs: Sequence[VirtioDev]) -> Callable[[Outcome], Iterable[str]]:
    """The `virtio:` lines name exactly `devs` (type and transport), each with
    the split ring, its type's queue count and VERSION_1 exactly on modern
    transports; each console's output file has the line the kernel sent."""

    def check_virtio(outcome: Outcome) -> Iterable[str]:
        problems = []
        lines = list(VIRTIO_LINE.finditer(outcome.log_text))
        found = sorted((m["type"], m["transport"]) for m in lines)
        expected = sorted((d.kind, d.transport) for d in devs)
        if found != expected:
            problems.append(f"virtio: lines name {found}, expected {expected}")
        for m in lines:
            features = m["features"].split("|")
            if m["ring"] != "split":
                problems.append(f"{m[0]!r}: ring is not split")
            if int(m["queues"]) != GENERIC_QUEUES.get(m["type"], -1):
                problems.append(f"{m[0]!r}: expected {GENERIC_QUEUES.get(m['type'])} queues")
            if ("VERSION_1" in features) != (m["transport"] in MODERN_TRANSPORTS):
                problems.append(f"{m[0]!r}: VERSION_1 must be negotiated exactly on modern transports")
            if "BAD_FEATURE" in features:
                problems.append(f"{m[0]!r}: BAD_FEATURE accepted")
        assert outcome.ctx is not None
        console_output = "".join(
            outcome.ctx.file(f"console{i}.log").read_text("utf-8", "replace")
            for i, dev in enumerate(devs)
            if dev.kind == "console" and outcome.ctx.file(f"console{i}.log").exists()
        )
        for m in lines:
            if m["type"] == "console":
                sent = f"virtio-probe: console at {m['location']} transport={m['transport']}\n"
                if sent not in console_output:
                    problems.append(f"console output lacks {sent!r} (got {console_output!r})")
        return problems

    return check_virtio


def virtio_probe(
    name: str,
    machine: str,
    firmware: str | None,
    accel: str,
    devs: Sequence[VirtioDev],
    extra_args: Sequence[str] = (),
) -> Scenario:
    """Boot with `devs` attached; the kernel must find and bring up exactly those."""
    expect = ",".join(f"{d.kind}:{d.transport}" for d in devs) or "none"
    serials = [f"disk{i}" for i, d in enumerate(devs) if d.kind == "blk"]
    append = f"mode=selftest expect.virtio={expect}"
    if serials:
        append += f" expect.blk.serial={','.join(serials)}"
    kinds = {d.kind for d in devs}
    must_pass = [r"^selftest: PASS virtio: devices by type and transport match expect\.virtio=$"]
    if "blk" in kinds:
        must_pass.append(r"^selftest: PASS virtio: blk round trip ")
    if "console" in kinds:
        must_pass.append(r"^selftest: PASS virtio: console round trip ")
    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel=accel,
        devices=lambda ctx: list(extra_args) + virtio_device_args(ctx, machine, devs),
        files={f"disk{i}.img": probe_image(f"disk{i}") for i, d in enumerate(devs) if d.kind == "blk"},
        append=append,
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=SELFTEST_OK,
        expect_anywhere=must_pass,
        forbid=[*DEFAULT_FORBID, r"^virtio: .* FAILED: "],
        check=check_virtio_lines(devs),
    )


def all_three(transport: str, props: str = "") -> list[VirtioDev]:
    return [VirtioDev(kind, transport, props) for kind in ("blk", "net", "console")]


VIRTIO_SCENARIOS: list[Scenario] = [
    # Transitional devices (the default on pc and on the q35 root bus): modern preferred.
    # qboot leaves every BAR unassigned: the kernel places them.
    virtio_probe("virtio-pc-transitional", "pc", "qboot", "tcg", all_three("pci-modern")),
    # SeaBIOS assigns the BARs and the kernel keeps them (ECAM on q35).
    virtio_probe("virtio-q35-transitional-seabios", "q35", "seabios", "tcg", all_three("pci-modern")),
    virtio_probe("virtio-pc-modern-only", "pc", "qboot", "tcg",
                 all_three("pci-modern", ",disable-legacy=on")),
    virtio_probe("virtio-q35-legacy-only", "q35", "qboot", "tcg",
                 all_three("pci-legacy", ",disable-modern=on")),
    virtio_probe("virtio-pc-legacy-only-seabios", "pc", "seabios", "tcg",
                 all_three("pci-legacy", ",disable-modern=on")),
    # Behind a PCI-to-PCI bridge on pc (qboot numbers no bridge and opens no
    # window: the kernel does both), one device of each interface.
    virtio_probe(
        "virtio-pc-bridge", "pc", "qboot", "tcg",
        [VirtioDev("blk", "pci-modern", ",bus=br0,addr=0x1"),
         VirtioDev("net", "pci-legacy", ",bus=br0,addr=0x2,disable-modern=on"),
         VirtioDev("console", "pci-modern", ",bus=br0,addr=0x3")],
        extra_args=["-device", "pci-bridge,id=br0,chassis_nr=1"],
    ),
    # Behind PCIe root ports on q35 (devices there are modern-only), under KVM.
    virtio_probe(
        "virtio-q35-root-ports-kvm", "q35", "qboot", "kvm",
        [VirtioDev("blk", "pci-modern", ",bus=rp0"),
         VirtioDev("console", "pci-modern", ",bus=rp1"),
         VirtioDev("blk", "pci-modern")],
        extra_args=["-device", "pcie-root-port,id=rp0,chassis=1,slot=1",
                    "-device", "pcie-root-port,id=rp1,chassis=2,slot=2"],
    ),
    # microvm with acpi=off: QEMU puts virtio_mmio.device= on the command line.
    # (A second -M merges into the first: `-M microvm -M acpi=off`.)
    virtio_probe("virtio-microvm-mmio-v1", "microvm", None, "tcg", all_three("mmio-v1"),
                 extra_args=["-M", "acpi=off"]),
    virtio_probe("virtio-microvm-mmio-v2", "microvm", None, "tcg", all_three("mmio-v2"),
                 extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"]),
    # microvm with ACPI: nothing on the command line, the kernel probes the window.
    virtio_probe("virtio-microvm-acpi-window", "microvm", None, "tcg",
                 [VirtioDev("blk", "mmio-v1"), VirtioDev("console", "mmio-v1")]),
]

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
    *VIRTIO_SCENARIOS,
]
