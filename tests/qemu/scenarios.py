"""The QEMU scenarios that `x.py test` runs.

Each entry in `SCENARIOS` is one boot of the kernel ELF. The matrix covers
every machine (pc, q35, microvm), both accelerators (KVM, TCG) and both
firmwares for pc/q35 (SeaBIOS, qboot) at least once while staying short:
SeaBIOS costs 3-4 s per boot under nested KVM, so it runs under TCG, where it
is fast. A plain `qemu-system-x86_64 -kernel` boot proves the ELF needs no
special flags, and the two deliberate failures prove that the harness sees a
panic and an exception.

Each scenario boots the kernel build its command line needs (`mode=selftest`
and `fail=`: the `selftest` build; `mode=bench`: the `bench` build; anything
else: the production kernel `x.py run` boots), or the one its
`kernel_features` names. Adding a scenario is a few lines: see
tests/qemu/README.md, which also lists every test-only command-line key.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import bench_compare, blk, queue_view
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
        # Guest CPU time is dear under this host's nested KVM: the block
        # tests' scratch write workload is left out there (the blk-*
        # scenarios run it in full under TCG, and so does the TCG one here).
        append="mode=selftest" + (" blk.workload=none" if accel == "kvm" and with_devices else ""),
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


def plain_selftest_command(ctx: RunContext) -> list[str]:
    """The stable contract's boot: the ELF `./x.py build` prints, a plain
    `qemu-system-x86_64 -kernel`, `-append mode=selftest` and the exit device."""
    return [qm.QEMU, "-kernel", str(ctx.kernel), "-append", "mode=selftest", "-display", "none",
            "-device", qm.DEBUG_EXIT_DEVICE,
            "-serial", f"file:{ctx.log}"]


def mode_not_built(mode: str) -> Scenario:
    """The production kernel asked for a mode it was built without: one line
    that says so, and QEMU's failure status, never a boot that goes on."""
    return Scenario(
        name=f"mode-not-built-{mode}",
        machine="q35",
        firmware="qboot",
        accel="tcg",
        append=f"mode={mode}",
        kernel_features=(),
        expect_status=qm.EXIT_SELFTEST_FAIL,
        expect_in_order=[BOOT_BANNER,
                         rf"^kernel: mode={mode} is not in this build \(built without the `{mode}` feature\); "],
        forbid=[r"^PANIC at ", r"^EXCEPTION ", r"^selftest: ", r"^bench: ", r"^kernel: ready", r"^virtio: "],
        timeout_s=20.0,
    )


# ---------------------------------------------------------------- virtio probing
#
# Each scenario below attaches a set of virtio devices and tells the kernel,
# through `expect.virtio=`, exactly which (type, transport) pairs it must
# find; the in-guest self-tests fail on any difference, bring every device up,
# and make a round trip through a split ring on each blk device (GET_ID and
# sector 0, compared with the marker the scenario wrote into the image, named
# in `expect.blk.serial=`) and each console (one line out, checked here in the
# console's output file). The check below also reads the `virtio:` lines.

#: The `virtio:` line of a device that came up (docs/contract.md).
VIRTIO_LINE = re.compile(
    r"^virtio: (?P<type>\S+) at (?P<location>pci \S+|mmio@0x[0-9a-f]+) "
    r"transport=(?P<transport>\S+) ring=(?P<ring>\S+) queues=(?P<queues>\d+) features=(?P<features>\S+)$",
    re.MULTILINE,
)
#: Queues each type's kernel driver sets up with QEMU's default device
#: options: blk one request queue (the block layer asks for one); net
#: receive, transmit and control (CTRL_VQ); console 16 ports (the driver's
#: default `console.ports=`, below QEMU's 31) of two queues plus the two
#: control queues (MULTIPORT).
DRIVER_QUEUES = {"blk": 1, "net": 3, "console": 34}
#: A device-specific feature each driver accepts whenever QEMU offers it:
#: its presence shows the line is the driver's, not the generic bring-up's.
DRIVER_FEATURE = {"blk": "BLK_FLUSH", "net": "NET_MAC", "console": "CONSOLE_EMERG_WRITE"}
MODERN_TRANSPORTS = ("pci-modern", "mmio-v2")


@dataclass(frozen=True)
class VirtioDev:
    """One virtio device of a probe scenario and what its `virtio:` line must say."""

    kind: str  # "blk", "net" or "console"
    transport: str  # "pci-modern", "pci-legacy", "mmio-v1" or "mmio-v2"
    props: str = ""  # extra -device properties, e.g. ",disable-legacy=on" or ",bus=br0"
    ring: str = "split"  # the ring layout the driver must end up with
    features: tuple[str, ...] = ()  # features that must be negotiated
    features_absent: tuple[str, ...] = ()  # features that must not be


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
    """Exactly one `virtio:` line per device of `devs` (type and transport), and
    none for anything else; each line is its driver's (a device-specific
    feature, the driver's queue count), with the ring layout and features the
    device asks for and VERSION_1 exactly on modern transports; each
    console's output file has the line the kernel sent."""

    def check_virtio(outcome: Outcome) -> Iterable[str]:
        problems = []
        every_line = re.findall(r"^virtio: .*$", outcome.log_text, re.MULTILINE)
        lines = list(VIRTIO_LINE.finditer(outcome.log_text))
        if len(every_line) != len(lines):
            problems.append(f"`virtio:` lines not in the contract's format: {every_line}")
        locations = [m["location"] for m in lines]
        if len(set(locations)) != len(locations):
            problems.append(f"more than one `virtio:` line for a device: {locations}")
        found = sorted((m["type"], m["transport"]) for m in lines)
        expected = sorted((d.kind, d.transport) for d in devs)
        if found != expected:
            problems.append(f"virtio: lines name {found}, expected {expected}")
        # Pair lines with devices of the same (type, transport), in order.
        unmatched = list(devs)
        for m in lines:
            dev = next((d for d in unmatched if (d.kind, d.transport) == (m["type"], m["transport"])), None)
            if dev is None:
                continue
            unmatched.remove(dev)
            features = m["features"].split("|")
            if m["ring"] != dev.ring:
                problems.append(f"{m[0]!r}: ring is not {dev.ring}")
            if ("RING_PACKED" in features) != (m["ring"] == "packed"):
                problems.append(f"{m[0]!r}: RING_PACKED negotiated iff ring=packed")
            if int(m["queues"]) != DRIVER_QUEUES.get(m["type"], -1):
                problems.append(f"{m[0]!r}: expected {DRIVER_QUEUES.get(m['type'])} queues")
            if DRIVER_FEATURE[m["type"]] not in features:
                problems.append(f"{m[0]!r}: no {DRIVER_FEATURE[m['type']]}: not the driver's line")
            if ("VERSION_1" in features) != (m["transport"] in MODERN_TRANSPORTS):
                problems.append(f"{m[0]!r}: VERSION_1 must be negotiated exactly on modern transports")
            if "BAD_FEATURE" in features:
                problems.append(f"{m[0]!r}: BAD_FEATURE accepted")
            for feature in dev.features:
                if feature not in features:
                    problems.append(f"{m[0]!r}: {feature} not negotiated")
            for feature in dev.features_absent:
                if feature in features:
                    problems.append(f"{m[0]!r}: {feature} negotiated")
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


# ---------------------------------------------------------------- interrupts
#
# The same devices, with the interrupt path checked: the kernel is told with
# `expect.irq=` which mode each device must end up in (msix, intx, mmio or
# polled, as a sorted multiset); the in-guest self-tests then make a request
# on every device and check that it completed by its interrupt (counted per
# queue) while the CPU halted, or, for polled devices, without interrupts.
# The check below reads the `virtio-irq:` lines (kernel/src/virtio/irq.rs).

#: One `virtio-irq:` route line per device.
IRQ_LINE = re.compile(
    r"virtio-irq: (?P<type>\S+) at (?P<location>pci \S+|mmio@0x[0-9a-f]+): "
    r"(?P<mode>MSI-X|INTx pin [A-D]|microvm slot GSI|GSI|polling)",
)
IRQ_MODE_OF_LINE = {"MSI-X": "msix", "GSI": "mmio", "microvm slot GSI": "mmio", "polling": "polled"}
IRQ_INTERRUPT_DRIVEN_PASSES = [
    r"^selftest: PASS virtio-irq: a request on each interrupt-driven device completes by its interrupt$",
    r"^selftest: PASS virtio-irq: the waiting CPU halts until the completion interrupt$",
    r"^selftest: PASS virtio-irq: stray interrupts on device vectors are counted, not fatal$",
]


def check_irq_lines(devs: Sequence[VirtioDev], modes: Sequence[str]) -> Callable[[Outcome], Iterable[str]]:
    """One `virtio-irq:` route line per device, in the expected modes; the
    per-queue counter lines are there; consoles got the interrupt round trip's line."""
    probe_check = check_virtio_lines(devs)

    def check(outcome: Outcome) -> Iterable[str]:
        problems = list(probe_check(outcome) or [])
        routes = list(IRQ_LINE.finditer(outcome.log_text))
        got = sorted(
            "intx" if m["mode"].startswith("INTx") else IRQ_MODE_OF_LINE[m["mode"]] for m in routes
        )
        if got != sorted(modes):
            problems.append(f"virtio-irq: route lines say {got}, expected {sorted(modes)}")
        counters = re.findall(
            r"virtio-irq: \S+ at (?:pci \S+|mmio@\S+) \((\w+)\) queue \d+: notifications \d+", outcome.log_text
        )
        if len(counters) < len(devs):
            problems.append(f"only {len(counters)} per-queue counter lines for {len(devs)} devices")
        assert outcome.ctx is not None
        for i, dev in enumerate(devs):
            path = outcome.ctx.file(f"console{i}.log")
            if dev.kind == "console" and "interrupt round trip" not in path.read_text("utf-8", "replace"):
                problems.append(f"console{i}.log lacks the interrupt round trip's line")
        return problems

    return check


def irq_scenario(
    name: str,
    machine: str,
    firmware: str | None,
    accel: str,
    devs: Sequence[VirtioDev],
    modes: Sequence[str],
    extra_args: Sequence[str] = (),
    extra_append: str = "",
    must_log: Sequence[str] = (),
) -> Scenario:
    """`virtio_probe` plus `expect.irq=`: every device must come up in `modes`."""
    base = virtio_probe(name, machine, firmware, accel, devs, extra_args)
    passes = [r"^selftest: PASS virtio-irq: every live device has an interrupt route or a logged polling reason$"]
    if any(m != "polled" for m in modes):
        passes += IRQ_INTERRUPT_DRIVEN_PASSES
    if "msix" in modes:
        passes.append(r"^selftest: PASS virtio-irq: MSI-X entries hold this CPU's messages")
    if "polled" in modes:
        passes.append(r"^selftest: PASS virtio-irq: polled devices complete requests without interrupts$")
    append = f"{base.append} expect.irq={','.join(sorted(modes))} {extra_append}".strip()
    return replace(
        base,
        append=append,
        # Nested KVM boots take seconds when the machine is busy; TCG ones do not.
        timeout_s=60.0 if accel == "kvm" else base.timeout_s,
        expect_anywhere=[*base.expect_anywhere, *passes, *must_log],
        check=check_irq_lines(devs, modes),
    )


IRQ_SCENARIOS: list[Scenario] = [
    # MSI-X, transitional devices on pc under KVM: each queue its own vector
    # where the table allows (net: 4 entries), shared otherwise (console: 2).
    irq_scenario("irq-pc-msix-transitional-kvm", "pc", "qboot", "kvm",
                 all_three("pci-modern"), ["msix"] * 3),
    # MSI-X, modern-only devices on q35 (ECAM).
    irq_scenario("irq-q35-msix-modern", "q35", "qboot", "tcg",
                 all_three("pci-modern", ",disable-legacy=on"), ["msix"] * 3),
    # MSI-X on the legacy interface: its device configuration moves to 24.
    irq_scenario("irq-pc-msix-legacy", "pc", "qboot", "tcg",
                 all_three("pci-legacy", ",disable-modern=on"), ["msix"] * 3),
    # No MSI-X (vectors=0): INTx on the IRQ SeaBIOS routed, level-triggered
    # through the I/O APIC, the ISR read in the handler; modern and legacy ISR.
    irq_scenario("irq-q35-intx-seabios", "q35", "seabios", "tcg",
                 all_three("pci-modern", ",vectors=0"), ["intx"] * 3,
                 must_log=[r"virtio-irq: blk at pci \S+: INTx pin A, IRQ \d+ -> GSI \d+ \(level"]),
    irq_scenario("irq-pc-intx-legacy-seabios", "pc", "seabios", "tcg",
                 all_three("pci-legacy", ",vectors=0,disable-modern=on"), ["intx"] * 3),
    # No MSI-X and qboot: qboot writes interrupt lines, but one slot off
    # (blk in slot 1 is said to be on IRQ 11 and interrupts on IRQ 10); the
    # kernel listens on every IRQ the chipset routes PCI to and follows the
    # device that claims the interrupt, saying so.
    irq_scenario("irq-q35-intx-qboot", "q35", "qboot", "tcg",
                 all_three("pci-modern", ",vectors=0"), ["intx"] * 3,
                 must_log=[r"virtio-irq: blk at pci 0000:00:01\.0: the firmware routed it to GSI 11, "
                           r"but it interrupts on GSI 10: following the hardware"]),
    # Firmware that routes nothing (virtio.intx=unrouted pretends so): every
    # device without MSI-X is polled, and the log says why.
    irq_scenario("irq-q35-intx-unrouted-polls", "q35", "qboot", "tcg",
                 all_three("pci-modern", ",vectors=0"), ["polled"] * 3, extra_append="virtio.intx=unrouted",
                 must_log=[r"virtio-irq: blk at pci \S+: polling: INTx pin A not routed by the firmware "
                           r"\(interrupt line 0xff, as virtio\.intx=unrouted pretends\)"]),
    # virtio-mmio through the I/O APIC on the GSI from virtio_mmio.device=.
    irq_scenario("irq-microvm-mmio-v1-kvm", "microvm", None, "kvm", all_three("mmio-v1"), ["mmio"] * 3,
                 extra_args=["-M", "acpi=off"]),
    irq_scenario("irq-microvm-mmio-v2", "microvm", None, "tcg", all_three("mmio-v2"), ["mmio"] * 3,
                 extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"]),
    # virtio.poll=1: MSI-X is left off and every device is polled, by request.
    irq_scenario("irq-q35-poll-requested-kvm", "q35", "qboot", "kvm",
                 all_three("pci-modern"), ["polled"] * 3, extra_append="virtio.poll=1",
                 must_log=[r"virtio-irq: blk at pci \S+: polling: virtio\.poll=1"]),
    irq_scenario("irq-microvm-poll-requested", "microvm", None, "tcg", all_three("mmio-v2"), ["polled"] * 3,
                 extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"],
                 extra_append="virtio.poll=1"),
]



# ---------------------------------------------------------------- one bring-up per device
#
# A normal boot (no mode=selftest) with blk, net and console, on PCI and on
# virtio-mmio, with QEMU tracing every status write (`-trace
# virtio_set_status`). The check reads QEMU's trace, not the kernel's log:
# each device must be brought up exactly once, by its driver (reset,
# ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK: 0, 1, 3, 11, 15), and
# nothing else may be written. The runner stops QEMU once `kernel: ready`
# is printed (every driver has brought its device up by then); QEMU flushes
# its trace log after every event, so nothing is lost.

#: The trace file in the scenario's work directory.
STATUS_TRACE = "virtio-status.trace"
#: `-msg timestamp=on` makes every trace line `<thread id>@<seconds>:<event> ...`.
STATUS_TRACE_LINE = re.compile(
    r"^(?P<thread>\d+)@[\d.]+:virtio_set_status vdev (?P<vdev>0x[0-9a-f]+) val (?P<val>\d+)$", re.MULTILINE
)
#: §3.1.1 once: reset, ACKNOWLEDGE, +DRIVER, +FEATURES_OK, +DRIVER_OK.
ONE_BRING_UP = [0, 1, 3, 11, 15]
#: §3.1.2 once, on a legacy interface (no FEATURES_OK): reset, ACKNOWLEDGE, +DRIVER, +DRIVER_OK.
ONE_LEGACY_BRING_UP = [0, 1, 3, 7]


def guest_status_writes(trace: str) -> dict[str, list[int]]:
    """Per device (`vdev` pointer, in order of first appearance): the status
    values the *guest* wrote, from a `-trace virtio_set_status -msg
    timestamp=on` log.

    QEMU's own machine reset writes 0 to every device from its main thread
    before any vCPU runs (the first line's thread); the guest's writes come
    from the vCPU thread. Consecutive zeros are folded into one: QEMU logs a
    guest reset of a virtio-pci device twice (the register write, then
    `virtio_pci_reset` writes 0 again), and logs 0 again when PCI
    enumeration writes the command register while bus mastering is off
    (`virtio_pci_write_config`); none of these is a second bring-up.
    """
    lines = list(STATUS_TRACE_LINE.finditer(trace))
    writes: dict[str, list[int]] = {}
    if not lines:
        return writes
    qemu_thread = lines[0]["thread"]
    for m in lines:
        values = writes.setdefault(m["vdev"], [])
        if m["thread"] == qemu_thread:
            continue
        value = int(m["val"])
        if value == 0 and values and values[-1] == 0:
            continue
        values.append(value)
    return writes


def status_write_problems(trace: str, devices: int, expected: Sequence[int] = tuple(ONE_BRING_UP)) -> list[str]:
    """Problems with a status trace of `devices` devices: each must show
    exactly one bring-up (`expected`) after QEMU's reset zeros."""
    writes = guest_status_writes(trace)
    problems = []
    if len(writes) != devices:
        problems.append(f"status writes for {len(writes)} device(s) in QEMU's trace, {devices} attached")
    for vdev, values in writes.items():
        if values != list(expected):
            problems.append(f"device {vdev}: guest status writes {values}, expected exactly {list(expected)}")
    return problems


def bring_up_once(name: str, machine: str, devs: Sequence[VirtioDev], extra_args: Sequence[str] = ()) -> Scenario:
    """A normal boot with `devs` (all on one transport); QEMU's status trace
    must show one bring-up each (§3.1.2's shorter one on legacy interfaces)."""
    legacy = all(d.transport in ("pci-legacy", "mmio-v1") for d in devs)

    def devices(ctx: RunContext) -> list[str]:
        trace = ["-msg", "timestamp=on", "-trace", "virtio_set_status", "-D", str(ctx.file(STATUS_TRACE))]
        return trace + list(extra_args) + virtio_device_args(ctx, machine, devs)

    def check(outcome: Outcome) -> Iterable[str]:
        assert outcome.ctx is not None
        path = outcome.ctx.file(STATUS_TRACE)
        trace = path.read_text("utf-8", "replace") if path.exists() else ""
        problems = status_write_problems(trace, len(devs), ONE_LEGACY_BRING_UP if legacy else ONE_BRING_UP)
        lines = list(VIRTIO_LINE.finditer(outcome.log_text))
        found = sorted((m["type"], m["transport"]) for m in lines)
        expected = sorted((d.kind, d.transport) for d in devs)
        if found != expected:
            problems.append(f"`virtio:` lines name {found}, expected {expected}")
        if problems:
            problems.append("status writes seen: " + ", ".join(
                f"{vdev} {values}" for vdev, values in guest_status_writes(trace).items()))
        return problems

    return Scenario(
        name=name,
        machine=machine,
        firmware="qboot" if machine != "microvm" else None,
        accel="tcg",
        devices=devices,
        files={f"disk{i}.img": probe_image(f"disk{i}") for i, d in enumerate(devs) if d.kind == "blk"},
        append="",
        expect_status=KILLED,
        stop_on=r"^kernel: ready$",
        expect_in_order=[BOOT_BANNER, r"^kernel: ready$"],
        forbid=[*DEFAULT_FORBID, r"^selftest: ", r"^virtio: .* FAILED: "],
        check=check,
    )


BRING_UP_SCENARIOS: list[Scenario] = [
    # Transitional devices on q35: the modern interface, MSI-X.
    bring_up_once("bringup-once-q35-pci", "q35", all_three("pci-modern")),
    # virtio-mmio version 2 on microvm, GSIs from the command line.
    bring_up_once("bringup-once-microvm-mmio", "microvm", all_three("mmio-v2"),
                  extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"]),
    # virtio-mmio version 1 (QEMU's default), a legacy interface: 0, 1, 3, 7.
    bring_up_once("bringup-once-microvm-mmio-v1", "microvm", all_three("mmio-v1"), extra_args=["-M", "acpi=off"]),
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
        name="selftest-plain-qemu",
        machine="pc",
        firmware="seabios",
        accel="tcg",
        command=plain_selftest_command,
        append="mode=selftest",
        kernel_features=("selftest",),
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=SELFTEST_OK,
        check=selftest_summary_consistent,
    ),
    mode_not_built("selftest"),
    mode_not_built("bench"),
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
        # log=info: the announcement of the address is an info line.
        append="fail=pagefault log=info",
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
    *IRQ_SCENARIOS,
    *BRING_UP_SCENARIOS,
]


# ---------------------------------------------------------------- the shell on the virtio console
#
# These boot normally (no mode=selftest): the kernel claims the console with
# its virtio-console driver and runs the shell on it. The console port and a
# named serial port are socket chardevs in the work directory; the
# interaction (tests/qemu/console_session.py) types commands as a user would
# and checks the answers against what QEMU was configured with, moves 1 MiB
# each way through the named port, and ends with `poweroff` (status 41).

CONSOLE_NAMED_PORT = "org.test.one"
SHELL_COMMANDS = ("devices", "disks", "blk read", "net", "ping", "ports", "write", "read",
                  "log", "uptime", "poweroff")


def console_devices(
    machine: str,
    serial_props: str = "",
    named_port: bool = True,
    disks: int = 0,
    net: bool = False,
) -> Callable[[RunContext], list[str]]:
    """A virtio-serial controller with the console on `console.sock` and, with
    `named_port`, `org.test.one` on `port1.sock`; `disks` virtio-blk disks
    (serials `disk<i>`) and a user-mode NIC with the standard MAC."""

    def devices(ctx: RunContext) -> list[str]:
        args: list[str] = []
        for i in range(disks):
            args += ["-drive", f"if=none,id=d{i},format=raw,file={ctx.file(f'disk{i}.img')}"]
            args += ["-device", f"{qm.virtio_device('virtio-blk', machine)},drive=d{i},serial=disk{i}"]
        if net:
            args += qm.user_net_args(machine)
        args += ["-chardev", f"socket,id=con,path={ctx.file('console.sock')},server=on,wait=off"]
        args += ["-device", f"{qm.virtio_device('virtio-serial', machine)},id=vser0{serial_props}"]
        args += ["-device", "virtconsole,chardev=con,bus=vser0.0"]
        if named_port:
            args += ["-chardev", f"socket,id=p1,path={ctx.file('port1.sock')},server=on,wait=off"]
            args += ["-device", f"virtserialport,chardev=p1,bus=vser0.0,name={CONSOLE_NAMED_PORT}"]
        return args

    return devices


def expect(condition: bool, problems: list[str], message: str) -> None:
    if not condition:
        problems.append(message)


def shell_session(
    transport: str,
    multiport: bool = True,
    stream_bytes: int = 1 * MiB,
    disks: int = 0,
    net: bool = False,
) -> Callable[[RunContext], list[str]]:
    """What a user does at the shell, checked step by step (see above)."""
    from .console_session import Port, Shell, fnv1a64, in_background, pattern

    def interact(ctx: RunContext) -> list[str]:
        problems: list[str] = []
        shell = Shell(ctx.file("console.sock"))
        try:
            shell.wait_prompt(timeout_s=30)
        except AssertionError:
            shell.type(b"\r", timeout_s=10)  # the banner went out before we listened
        port = Port(ctx.file("port1.sock")) if multiport else None

        # help, and line editing: backspace, Ctrl-U, Ctrl-C.
        text = shell.run("help")
        for command in SHELL_COMMANDS:
            expect(command in text, problems, f"help does not mention {command!r}")
        text = shell.type(b"hlep\x7f\x7f\x7felp\r")
        expect("hlep\x08 \x08\x08 \x08\x08 \x08elp\n" in text and "commands:" in text, problems,
               f"backspace editing: {text[:120]!r}")
        text = shell.type(b"garbage\x15uptime\r")
        expect(re.search(r"up \d+\.\d{6} s", text) is not None and "error" not in text, problems,
               f"Ctrl-U then uptime: {text!r}")
        text = shell.type(b"oops\x03")
        expect(text.startswith("oops^C\n") and "error" not in text, problems, f"Ctrl-C: {text!r}")
        text = shell.run("frobnicate")
        expect("error: unknown command" in text, problems, f"unknown command: {text!r}")

        # devices: the console with its driver, transport, ring, features, queue counters.
        text = shell.run("devices")
        console_line = re.search(r"^console at (\S+ \S+|\S+): transport=(\S+) ring=(\S+) irq=\S+ features=(\S+)$",
                                 text, re.MULTILINE)
        if console_line is None:
            problems.append(f"devices has no console line: {text!r}")
        else:
            features = console_line[4].split("|")
            expect(console_line[2] == transport, problems, f"console transport {console_line[2]}, want {transport}")
            expect(console_line[3] == "split", problems, f"console ring {console_line[3]}")
            expect(("CONSOLE_MULTIPORT" in features) == multiport, problems, f"features {features}")
            expect("CONSOLE_EMERG_WRITE" in features, problems, f"features {features}")
        expect("driver: console" in text, problems, "devices does not name the console driver")
        expect(re.search(r"queue  1 port0-tx\s+size\s+\d+: added [1-9]\d*, notifications [1-9]", text)
               is not None, problems, f"no counters for port 0's transmit queue: {text!r}")
        expect(("control-rx" in text) == multiport, problems, "control queues listed iff MULTIPORT")
        expect(text.count("blk at ") == disks, problems, f"devices lists {text.count('blk at ')} disks, want {disks}")
        for i in range(disks):
            expect(f"driver: blk (vd{chr(ord('a') + i)})" in text, problems, f"devices: no blk driver line for disk {i}")
        if net:
            expect("driver: virtio-net (net0)" in text and "NET_MAC" in text, problems,
                   "devices: the NIC's driver or features are missing")

        # ports: names and states as QEMU was configured.
        text = shell.run("ports")
        rows = {m[1]: m for m in re.finditer(r"^\s*(\d+)\s+(\S+)\s+(yes|no)\s+(open|closed)\s+(open|closed)",
                                             text, re.MULTILINE)}
        expect("0" in rows and rows["0"][3] == "yes", problems, f"port 0 is not a console: {text!r}")
        if multiport:
            named = [m for m in rows.values() if m[2] == CONSOLE_NAMED_PORT]
            expect(len(named) == 1 and named[0][4] == "open" and named[0][5] == "open", problems,
                   f"ports: {CONSOLE_NAMED_PORT} missing or not open on both sides: {text!r}")
        else:
            expect(list(rows) == ["0"], problems, f"max_ports=1 must show port 0 only: {text!r}")

        if port is not None:
            # write / read on the named port.
            text = shell.run(f"write {CONSOLE_NAMED_PORT} hello from the shell")
            expect("wrote 21 bytes" in text, problems, f"write: {text!r}")
            got = port.read_until(b"\n")
            expect(got == b"hello from the shell\n", problems, f"host got {got!r}")
            port.send(b"hello from the host\n")
            text = shell.run(f"read {CONSOLE_NAMED_PORT}")
            expect("hello from the host" in text, problems, f"read: {text!r}")

            # stream_bytes each way, intact (FNV-1a over the pattern).
            inbound = pattern(stream_bytes, 3)
            sender, sent = in_background(port.send, inbound)
            text = shell.run(f"recv {CONSOLE_NAMED_PORT} {stream_bytes}", timeout_s=120)
            sender.join(timeout=10)
            if sent and isinstance(sent[0], BaseException):
                problems.append(f"host side of recv: {sent[0]}")
            want = f"received {stream_bytes} bytes from port 1 in"
            expect(want in text and f"fnv1a64={fnv1a64(inbound):#018x}" in text, problems,
                   f"recv: {text!r} (want hash {fnv1a64(inbound):#018x})")
            reader, got = in_background(port.read_exactly, stream_bytes, 120.0)
            text = shell.run(f"send {CONSOLE_NAMED_PORT} {stream_bytes} 5", timeout_s=120)
            reader.join(timeout=30)
            expect(f"sent {stream_bytes} bytes to port 1" in text, problems, f"send: {text!r}")
            outbound = got[0] if got else None
            if isinstance(outbound, BaseException):
                problems.append(f"host side of send: {outbound}")
            elif outbound != pattern(stream_bytes, 5):
                problems.append("the bytes `send` wrote differ from the pattern")

        # disks, blk read and net, against what QEMU was given.
        text = shell.run("disks")
        for i in range(disks):
            expect(f'serial "disk{i}", 2048 sectors' in text, problems, f"disks: no disk{i}: {text!r}")
        if disks:
            text = shell.run("blk read vda 0")
            expect("|virtio-probe:dis|" in text and text.count("\n") == 32, problems,
                   f"blk read vda 0: {text[:300]!r}")
            text = shell.run("blk read vdz 0")
            expect("error:" in text, problems, f"blk read of a missing disk: {text!r}")
        if net:
            text = ""
            for _ in range(40):
                text = shell.run("net")
                if "address 10.0.2.15" in text:
                    break
                time.sleep(0.25)
            expect(qm.STANDARD_MAC in text and "link up" in text, problems, f"net: {text!r}")
            expect("address 10.0.2.15" in text, problems, f"net: no DHCP address: {text!r}")
            text = shell.run("ping 10.0.2.2", timeout_s=20)
            expect("reply from 10.0.2.2" in text, problems, f"ping: {text!r}")
        else:
            text = shell.run("net")
            expect("error:" in text, problems, f"net without a card: {text!r}")

        text = shell.run("log debug")
        expect("log level is now DEBUG" in text, problems, f"log: {text!r}")
        shell.run("log info")

        shell.send(b"poweroff\r")
        shell.read_until(b"powering off")
        return problems

    interact.__name__ = f"shell_session_{transport.replace('-', '_')}"
    return interact


def console_shell(
    name: str,
    machine: str,
    firmware: str | None,
    accel: str,
    transport: str,
    serial_props: str = "",
    extra_args: Sequence[str] = (),
    multiport: bool = True,
    stream_bytes: int = 1 * MiB,
    disks: int = 0,
    net: bool = False,
    timeout_s: float = 120.0,
) -> Scenario:
    """A normal boot with the shell on the console, driven through sockets; ends in `poweroff`."""
    base_devices = console_devices(machine, serial_props, multiport, disks, net)
    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel=accel,
        devices=lambda ctx: list(extra_args) + base_devices(ctx),
        files={f"disk{i}.img": probe_image(f"disk{i}") for i in range(disks)},
        append="log=info",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[BOOT_BANNER, r"^kernel: ready$", r"^shell: ready on virtio console port 0 ",
                         r"^shell: poweroff$"],
        timeout_s=timeout_s,
        interact=shell_session(transport, multiport, stream_bytes, disks, net),
    )


def panic_reaches_the_console(ctx: RunContext) -> list[str]:
    """`panic` at the shell: the report arrives on the console through EMERG_WRITE."""
    from .console_session import Shell

    shell = Shell(ctx.file("console.sock"))
    try:
        shell.wait_prompt(timeout_s=30)
    except AssertionError:
        shell.type(b"\r", timeout_s=10)
    shell.send(b"panic boom-from-the-shell\r")
    # The echo of the typed line comes first; the report after it.
    shell.read_until(b"panic boom-from-the-shell\r\n", timeout_s=10)
    try:
        report = shell.read_until(b"boom-from-the-shell\r\n", timeout_s=20).decode("utf-8", "replace")
    except AssertionError as err:
        return [f"no panic report on the console: {err}"]
    if re.search(r"PANIC at \S+:\d+: shell: deliberate panic: boom-from-the-shell", report) is None:
        return [f"the console got {report!r}, not the panic report"]
    return []


CONSOLE_SCENARIOS: list[Scenario] = [
    # The full session on q35 (transitional device, modern interface, MSI-X),
    # with disks and a NIC for `disks`, `net` and `ping`.
    console_shell("console-shell-q35-kvm", "q35", "qboot", "kvm", "pci-modern", disks=2, net=True,
                  timeout_s=300.0),
    # Legacy virtio-pci (QUEUE_PFN, fixed queue size, MSI-X moves the config).
    console_shell("console-shell-pc-legacy", "pc", "qboot", "kvm", "pci-legacy",
                  serial_props=",disable-modern=on", stream_bytes=256 * 1024),
    # virtio-mmio version 1 and 2 on microvm.
    console_shell("console-shell-microvm-mmio-v1", "microvm", None, "kvm", "mmio-v1",
                  extra_args=["-M", "acpi=off"], stream_bytes=256 * 1024),
    console_shell("console-shell-microvm-mmio-v2", "microvm", None, "kvm", "mmio-v2",
                  extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"],
                  stream_bytes=256 * 1024),
    # max_ports=1: no MULTIPORT, port 0 only, no control queues.
    console_shell("console-shell-single-port", "q35", "qboot", "kvm", "pci-modern",
                  serial_props=",max_ports=1,disable-legacy=on", multiport=False),
    # A panic after the shell is up reaches the console through EMERG_WRITE.
    Scenario(
        name="console-panic-emerg-write",
        machine="pc",
        firmware="qboot",
        accel="kvm",
        devices=console_devices("pc", named_port=False),
        append="log=info",
        expect_status=qm.EXIT_PANIC,
        expect_in_order=[BOOT_BANNER, r"^shell: ready on virtio console port 0 ",
                         r"^PANIC at \S+:\d+: shell: deliberate panic: boom-from-the-shell$"],
        forbid=[r"^EXCEPTION ", r"^selftest: "],
        timeout_s=60,
        interact=panic_reaches_the_console,
    ),
]

SCENARIOS += CONSOLE_SCENARIOS


# ---------------------------------------------------------------- virtio-blk
#
# Each scenario attaches disks and runs the block self-tests
# (kernel/src/block/selftests/). Scratch disks (serial `scratch...`) are
# written at many offsets, sizes and queue depths; afterwards the check
# replays the guest's `blk: wrote/zeroed/discarded/...` lines over a copy of
# the image's initial contents and compares every byte of the image
# (tests/qemu/blk.py), and each disk's `block:` line must show what QEMU was
# told (transport, queue size, features, read-only). Host-filled disks are
# read whole by the guest and compared with the pattern named in
# `blk.verify=`. All TCG: the work is I/O, and TCG boots fast here.


@dataclass(frozen=True)
class BlkDrive:
    """One disk of a blk scenario."""

    serial: str
    #: Image size in bytes.
    size: int = 16 * MiB
    #: The host fills the image with the pattern of this seed (after sector 0).
    fill_seed: int | None = None
    #: Extra `-drive` options.
    drive_opts: str = ",discard=unmap"
    #: Extra `-device` properties.
    props: str = ""
    #: A blkdebug rule file's text: the image is reached through blkdebug.
    blkdebug: str | None = None
    #: `block:` line attributes that must hold (see `blk.disk_problems`).
    want: Mapping[str, object] = field(default_factory=dict)
    #: The transport it must come up on, if not the scenario's.
    transport: str | None = None

    @property
    def image(self) -> str:
        return f"{self.serial}.img"

    @property
    def writable(self) -> bool:
        return self.serial.startswith("scratch") and "readonly=on" not in self.drive_opts


def blk_drive_args(ctx: RunContext, machine: str, index: int, drive: BlkDrive) -> list[str]:
    image = ctx.file(drive.image)
    if drive.blkdebug is not None:
        rules = ctx.file(f"{drive.serial}.blkdebug.conf")
        rules.write_text(drive.blkdebug)
        target = f"blkdebug:{rules}:{image}"
    else:
        target = str(image)
    return [
        "-drive", f"if=none,id=blk{index},format=raw,file={target}{drive.drive_opts}",
        "-device", f"{qm.virtio_device('virtio-blk', machine)},drive=blk{index},serial={drive.serial}{drive.props}",
    ]  # fmt: skip


def blk_scenario(
    name: str,
    machine: str,
    transport: str,
    drives: Sequence[BlkDrive],
    firmware: str | None = "qboot",
    accel: str = "tcg",
    extra_args: Sequence[str] = (),
    append: str = "",
    ordered: bool = True,
    expect_anywhere: Sequence[str] = (),
) -> Scenario:
    """Boot with `drives` (on `transport` unless they say); the block self-tests must pass,
    every image must hold exactly what the guest announced, and each `block:`
    line must match its drive. With `ordered`, the disks must be named vda,
    vdb, ... in the order of `drives` (PCI: the order of their slots)."""
    seed = zlib.crc32(name.encode())
    serials = ",".join(d.serial for d in drives)
    read_only = ",".join(d.serial for d in drives if "readonly=on" in d.drive_opts) or "none"
    verify = ",".join(f"{d.serial}:{d.fill_seed:#x}:1" for d in drives if d.fill_seed is not None)
    words = [
        "mode=selftest",
        f"blk.seed={seed}",
        f"expect.virtio={','.join(f'blk:{d.transport or transport}' for d in drives)}",
        f"expect.blk.serial={serials}",
        f"expect.blk.ro={read_only}",
    ]
    if verify:
        words.append(f"blk.verify={verify}")
    if append:
        words.append(append)
    must_pass = [r"^selftest: PASS block: one disk per virtio-blk device"]
    if any(d.writable and d.blkdebug is None for d in drives):
        must_pass += [
            r"^selftest: PASS block: scratch: write, read back, verify",
            r"^selftest: PASS block: scratch: queue depths from 1 to the queue size$",
            r"^selftest: PASS block: scratch: the largest request \(seg_max page segments\) is one request",
            r"^selftest: PASS block: scratch: flush, write-zeroes and discard$",
        ]
    if verify:
        must_pass.append(r"^selftest: PASS block: host-filled disks hold the pattern")

    def devices(ctx: RunContext) -> list[str]:
        args = list(extra_args)
        for index, drive in enumerate(drives):
            args += blk_drive_args(ctx, machine, index, drive)
        return args

    def check_disks(outcome: Outcome) -> Iterable[str]:
        assert outcome.ctx is not None
        log = outcome.log_text
        problems = list(selftest_summary_consistent(outcome))
        lines = blk.disk_lines(log)
        if [line.name for line in lines] != [blk_name(i) for i in range(len(lines))]:
            problems.append(f"disks named {[line.name for line in lines]}, not vda, vdb, ...")
        if ordered and [line.serial for line in lines] != [d.serial for d in drives]:
            problems.append(f"disks in order {[line.serial for line in lines]}, "
                            f"expected {[d.serial for d in drives]}")
        want = {
            d.serial: {"transport": d.transport or transport, "sectors": d.size // blk.SECTOR,
                       "read_only": "readonly=on" in d.drive_opts, **d.want}
            for d in drives
        }  # fmt: skip
        problems += blk.disk_problems(lines, want)
        for drive in drives:
            image = outcome.ctx.file(drive.image)
            initial = blk.original(image).read_bytes()
            must_write = drive.writable
            problems += blk.check_image(image, initial, log, drive.serial, must_write=must_write)
        return problems

    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel=accel,
        devices=devices,
        files={d.image: blk.disk_image(d.serial, d.size, d.fill_seed) for d in drives},
        append=" ".join(words),
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=SELFTEST_OK,
        expect_anywhere=[*must_pass, *expect_anywhere],
        forbid=[*DEFAULT_FORBID, r"^virtio: .* FAILED: ", r"^block: .* FAILED: "],
        check=check_disks,
    )


def blk_name(index: int) -> str:
    """vda, vdb, ..., vdz, vdaa, ... (kernel/src/block/mod.rs `disk_name`)."""
    letters = ""
    n = index + 1
    while n > 0:
        n -= 1
        letters = chr(ord("a") + n % 26) + letters
        n //= 26
    return "vd" + letters


#: blkdebug rules: reads of sector 1000 and writes of sector 3000 fail with EIO.
BLKDEBUG_EIO = """\
[inject-error]
event = "read_aio"
iotype = "read"
errno = "5"
sector = "1000"

[inject-error]
event = "write_aio"
iotype = "write"
errno = "5"
sector = "3000"
"""

MODERN = ",disable-legacy=on"
LEGACY = ",disable-modern=on"
NO_INDIRECT = {"features_absent": ("RING_INDIRECT_DESC",)}
NO_EVENT_IDX = {"features_absent": ("RING_EVENT_IDX",)}

BLK_SCENARIOS: list[Scenario] = [
    # The three transports, each with one scratch disk written and checked.
    blk_scenario("blk-modern-q35", "q35", "pci-modern",
                 [BlkDrive("scratch0", props=MODERN,
                           want={"features": ("VERSION_1", "BLK_FLUSH", "RING_INDIRECT_DESC", "RING_EVENT_IDX")})]),
    blk_scenario("blk-legacy-pc", "pc", "pci-legacy",
                 [BlkDrive("scratch0", props=LEGACY, want={"features_absent": ("VERSION_1",)})]),
    blk_scenario("blk-mmio-v1", "microvm", "mmio-v1", [BlkDrive("scratch0")],
                 firmware=None, extra_args=["-M", "acpi=off"]),
    blk_scenario("blk-mmio-v2", "microvm", "mmio-v2", [BlkDrive("scratch0")],
                 firmware=None, extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"]),
    # Two disks at once, on different transports; named in slot order.
    blk_scenario("blk-two-disks", "pc", "pci-modern",
                 [BlkDrive("scratch0", props=MODERN + ",addr=0x4"),
                  BlkDrive("scratch1", size=12 * MiB, props=LEGACY + ",addr=0x5", transport="pci-legacy")]),
    # Queue sizes: the smallest and largest QEMU allows (seg_max follows).
    blk_scenario("blk-queue-16", "q35", "pci-modern",
                 [BlkDrive("scratch0", props=",queue-size=16", want={"queue_size": 16, "max_segments": 14})]),
    blk_scenario("blk-queue-1024", "q35", "pci-modern",
                 [BlkDrive("scratch0", props=",queue-size=1024", want={"queue_size": 1024})]),
    # Ring features off: direct chains only (queue depth size/3), no event index.
    blk_scenario("blk-no-indirect", "q35", "pci-modern",
                 [BlkDrive("scratch0", props=",indirect_desc=off", want=NO_INDIRECT)],
                 expect_anywhere=[r"block: vda: depths \[.*\b85\] of 256 descriptors \(indirect off\)"]),
    blk_scenario("blk-no-event-idx-legacy", "q35", "pci-legacy",
                 [BlkDrive("scratch0", props=LEGACY + ",event_idx=off", want=NO_EVENT_IDX)]),
    # A disk the host filled: the guest reads it all and compares; no writes.
    blk_scenario("blk-host-filled", "q35", "pci-modern",
                 [BlkDrive("golden0", size=4 * MiB, fill_seed=0x60_1de2, props=MODERN)]),
    # readonly=on: VIRTIO_BLK_F_RO; every write is refused, the image is untouched.
    blk_scenario("blk-read-only", "q35", "pci-modern",
                 [BlkDrive("scratch-ro0", size=4 * MiB, fill_seed=0x2ead_0417,
                           drive_opts=",readonly=on", props=MODERN,
                           want={"features": ("BLK_RO",)})],
                 expect_anywhere=[r"^selftest: PASS block: read-only disks are exactly expect\.blk\.ro="]),
    # blkdebug makes the host's I/O fail: the guest sees IOERR, says so, keeps going.
    blk_scenario("blk-ioerr-blkdebug", "q35", "pci-modern",
                 [BlkDrive("scratch-faulty0", drive_opts="", props=MODERN, blkdebug=BLKDEBUG_EIO)],
                 append="expect.blk.ioerr=scratch-faulty0:read:1000,scratch-faulty0:write:3000",
                 expect_anywhere=[
                     r"^selftest: PASS block: injected I/O errors are reported",
                     r"block: vda: read of 1 sector\(s\) at 1000 failed: device reported an I/O error \(IOERR\)$",
                     r"block: vda: write of 1 sector\(s\) at 3000 failed: device reported an I/O error \(IOERR\)$",
                 ]),
]

SCENARIOS += BLK_SCENARIOS


# ---------------------------------------------------------------- virtio-net
#
# The kernel claims every NIC with its virtio-net driver and runs smoltcp on
# it (kernel/src/net/). Two kinds of scenario:
#
# - services (normal boot): QEMU's user network with `hostfwd=` rules to the
#   guest's TCP echo (port 7) and HTTP (port 80) servers. Once the guest logs
#   its DHCP lease, the host sends 1 MiB of random bytes through the echo
#   server and compares what comes back, fetches the status page (200, the
#   MAC address QEMU was given, the transport, the per-queue counters) and a
#   missing page (404); then the run is stopped. Afterwards the check reads
#   the capture QEMU's filter-dump wrote and finds the guest's DHCP exchange
#   under the right MAC address.
# - self-test: DHCP, ARP and ping to the gateway in the guest, and with two
#   NICs on one QEMU hub, frames between them and the control queue
#   (promiscuous, all-multicast, MAC address).
#
# These run under TCG: a network round trip is many small steps, and TCG is
# the predictable accelerator on this (nested) machine. Hub NICs sit on the
# pc machine: q35 with qboot does not start with a hubport NIC (QEMU 7.2).

#: One line per card from the driver (kernel/src/net/nic.rs).
NET_CARD_LINE = re.compile(
    r"^(?P<name>net\d+): virtio-net at (?P<location>pci \S+|mmio@0x[0-9a-f]+) "
    r"transport=(?P<transport>\S+) ring=(?P<ring>\S+) queues=(?P<queues>\d+) "
    r"mac=(?P<mac>\S+) features=(?P<features>\S+)$",
    re.MULTILINE,
)
#: The DHCP lease line of the first card (QEMU's user network always gives these).
NET_DHCP_LINE = r"net0: dhcp: address 10\.0\.2\.15/24 gateway 10\.0\.2\.2 dns 10\.0\.2\.3$"
NET_GUEST_ADDRESS = "10.0.2.15"
NET_SELFTESTS_BASIC = [
    r"^selftest: PASS net: every card is live with a full receive queue$",
    r"^selftest: PASS net: DHCP lease from QEMU's user network$",
    r"^selftest: PASS net: the gateway answers ARP$",
    r"^selftest: PASS net: the gateway answers ping$",
]
NET_SELFTESTS_HUB = [
    r"^selftest: PASS net: frames sent on one card arrive intact on the other \(hub\)$",
    r"^selftest: PASS net: promiscuous mode and MAC address through the control queue$",
]


@dataclass(frozen=True)
class NetCard:
    """What one card's line must say: transport, queues, features there and not there."""

    transport: str
    mac: str = qm.STANDARD_MAC
    ring: str = "split"
    queues: int = 3
    features: tuple[str, ...] = ()
    features_absent: tuple[str, ...] = ()
    header_len: int = 12


def net_nic_args(machine: str, netdev: str, mac: str, props: str = "") -> list[str]:
    rom = ",romfile=" if machine != "microvm" else ""
    return ["-device", f"{qm.virtio_device('virtio-net', machine)},netdev={netdev},mac={mac}{rom}{props}"]


def check_net_cards(cards: Sequence[NetCard], pcap: str | None = "net0.pcap") -> Callable[[Outcome], Iterable[str]]:
    """The card lines match `cards` (in order), each card's header length is
    logged as expected, and (with `pcap`) the capture holds net0's DHCP
    exchange: DISCOVER/REQUEST from its MAC, OFFER/ACK of 10.0.2.15 to it."""
    from . import net

    def check_net(outcome: Outcome) -> Iterable[str]:
        problems = []
        lines = list(NET_CARD_LINE.finditer(outcome.log_text))
        if len(lines) != len(cards):
            problems.append(f"{len(lines)} card lines, expected {len(cards)}")
        for line, card in zip(lines, cards):
            features = line["features"].split("|")
            name = line["name"]
            expect(line["transport"] == card.transport, problems,
                   f"{name}: transport {line['transport']}, expected {card.transport}")
            expect(line["mac"] == card.mac, problems, f"{name}: mac {line['mac']}, expected {card.mac}")
            expect(line["ring"] == card.ring, problems, f"{name}: ring {line['ring']}, expected {card.ring}")
            expect(int(line["queues"]) == card.queues, problems, f"{name}: {line['queues']} queues, expected {card.queues}")
            expect(("VERSION_1" in features) == (card.transport in MODERN_TRANSPORTS), problems,
                   f"{name}: VERSION_1 must be negotiated exactly on modern transports: {features}")
            for feature in card.features:
                expect(feature in features, problems, f"{name}: {feature} not negotiated: {features}")
            for feature in card.features_absent:
                expect(feature not in features, problems, f"{name}: {feature} negotiated: {features}")
            header = re.search(rf"{name}: mtu \d+, link up, (\d+)-byte header", outcome.log_text)
            expect(header is not None and int(header[1]) == card.header_len, problems,
                   f"{name}: header length {header[1] if header else '?'}, expected {card.header_len}")
        if pcap is not None:
            assert outcome.ctx is not None
            frames = net.read_pcap(outcome.ctx.file(pcap))
            problems += [f"{pcap}: {p}" for p in
                         net.check_dhcp_exchange(net.dhcp_messages(frames), cards[0].mac, NET_GUEST_ADDRESS)]
        return problems

    return check_net


def net_services_session(card: NetCard, echo_bytes: int, expect_merged: bool) -> Callable[[RunContext], list[str]]:
    """Echo `echo_bytes` random bytes, GET / and GET /missing (see above)."""
    from . import net

    def interact(ctx: RunContext) -> list[str]:
        problems: list[str] = []
        data = os.urandom(echo_bytes)
        back, seconds = net.echo_round_trip(ctx.port("echo"), data, timeout_s=120.0)
        if back != data:
            same = next((i for i, (a, b) in enumerate(zip(back, data)) if a != b), min(len(back), len(data)))
            problems.append(f"echo: {len(back)} of {len(data)} bytes came back in {seconds:.1f} s, "
                            f"first difference at byte {same}")
        status, headers, body = net.http_get(ctx.port("http"), "/")
        expect(status == 200, problems, f"GET /: status {status}")
        expect(headers.get("content-type", "").startswith("text/html"), problems, f"GET /: headers {headers}")
        expect(card.mac in body, problems, f"GET /: the page does not list the MAC {card.mac}")
        expect(card.transport in body, problems, f"GET /: the page does not name the transport {card.transport}")
        rx_row = re.search(r"<td>0 rx</td><td>(\d+)</td><td>(\d+)</td><td>merged (\d+),", body)
        if rx_row is None:
            problems.append("GET /: no receive-queue counters on the page")
        else:
            packets, merged = int(rx_row[1]), int(rx_row[3])
            expect(packets >= echo_bytes // 1514, problems, f"GET /: {packets} packets received, too few")
            expect((merged > 0) == expect_merged, problems,
                   f"GET /: {merged} merged packets, expected {'some' if expect_merged else 'none'}")
        expect(re.search(r"<td>1 tx</td><td>[1-9]\d*</td>", body) is not None, problems,
               "GET /: no transmitted packets counted")
        status, _, _ = net.http_get(ctx.port("http"), "/missing")
        expect(status == 404, problems, f"GET /missing: status {status}")

        # Link status: QEMU's set_link changes the status field and raises
        # the configuration interrupt; the kernel logs each change, and the
        # page shows it.
        monitor = net.Monitor(ctx.file("monitor.sock"))
        try:
            mark = len(ctx.log.read_bytes())
            monitor.command("set_link n0 off")
            down = net.wait_for_line(ctx.log, r"net0: link down$", after=mark)
            expect(down is not None, problems, "set_link n0 off: the kernel did not log `net0: link down`")
            monitor.command("set_link n0 on")
            up = net.wait_for_line(ctx.log, r"net0: link up$", after=down or mark)
            expect(up is not None, problems, "set_link n0 on: the kernel did not log `net0: link up`")
        finally:
            monitor.close()
        status, _, body = net.http_get(ctx.port("http"), "/")
        expect(status == 200 and "<th>link</th><td>up</td>" in body, problems,
               "GET / after the link came back: not up on the page")
        return problems

    interact.__name__ = f"net_services_{card.transport.replace('-', '_')}"
    return interact


def net_services(
    name: str,
    machine: str,
    firmware: str | None,
    card: NetCard,
    props: str = "",
    extra_args: Sequence[str] = (),
    append: str = "",
    echo_bytes: int = 1 * MiB,
    expect_merged: bool = False,
    accel: str = "tcg",
) -> Scenario:
    """A normal boot serving echo and HTTP through hostfwd (see above)."""

    def devices(ctx: RunContext) -> list[str]:
        netdev = (f"user,id=n0,hostfwd=tcp:127.0.0.1:{ctx.port('echo')}-:7,"
                  f"hostfwd=tcp:127.0.0.1:{ctx.port('http')}-:80")
        args = list(extra_args) + ["-netdev", netdev]
        args += ["-object", f"filter-dump,id=dump0,netdev=n0,file={ctx.file('net0.pcap')}"]
        args += net_nic_args(machine, "n0", card.mac, props)
        args += ["-monitor", f"unix:{ctx.file('monitor.sock')},server=on,wait=off"]
        return args

    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel=accel,
        devices=devices,
        # log=info: the card's header-length line (check_net_cards) is an info line.
        append=f"log=info {append}".strip(),
        expect_status=KILLED,
        expect_in_order=[BOOT_BANNER, r"^net0: virtio-net at ", r"^kernel: ready$", NET_DHCP_LINE],
        forbid=[*DEFAULT_FORBID, r"^selftest: ", r"WARN kernel::net", r"WARN drivers::net"],
        timeout_s=180.0,
        interact=net_services_session(card, echo_bytes, expect_merged),
        interact_after=NET_DHCP_LINE,
        stop_after_interact=True,
        check=check_net_cards([card]),
    )


def net_selftest(
    name: str,
    machine: str,
    firmware: str | None,
    cards: Sequence[tuple[NetCard, str]],
    hub_pairs: int = 0,
    extra_args: Sequence[str] = (),
    append: str = "",
    accel: str = "tcg",
    expect_anywhere: Sequence[str] = (),
    forbid: Sequence[str] = (),
) -> Scenario:
    """`mode=selftest` with `cards` (card, -device props); the first is on
    QEMU's user network (captured), the next `2 * hub_pairs` on hubs."""

    def devices(ctx: RunContext) -> list[str]:
        args = list(extra_args) + ["-netdev", "user,id=n0"]
        args += ["-object", f"filter-dump,id=dump0,netdev=n0,file={ctx.file('net0.pcap')}"]
        for i, (card, props) in enumerate(cards):
            if i > 0:
                hub = 1 + (i - 1) // 2
                args += ["-netdev", f"hubport,id=n{i},hubid={hub}"]
            args += net_nic_args(machine, f"n{i}", card.mac, props)
        return args

    passes = list(NET_SELFTESTS_BASIC) + (NET_SELFTESTS_HUB if hub_pairs else [])
    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel=accel,
        devices=devices,
        append=f"mode=selftest {append}".strip(),
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=SELFTEST_OK,
        expect_anywhere=[*passes, *expect_anywhere],
        forbid=[*DEFAULT_FORBID, *forbid],
        timeout_s=120.0,
        check=check_net_cards([card for card, _ in cards]),
    )


NET_MODERN_FEATURES = ("NET_MAC", "NET_STATUS", "NET_MRG_RXBUF", "NET_CTRL_VQ", "NET_CTRL_RX",
                       "NET_CTRL_MAC_ADDR", "RING_EVENT_IDX", "RING_INDIRECT_DESC")

NET_SCENARIOS: list[Scenario] = [
    # Modern PCI (the transitional device's modern interface), MSI-X.
    net_services("net-services-q35-modern", "q35", "qboot",
                 NetCard("pci-modern", features=NET_MODERN_FEATURES)),
    # The packed ring (packed=on), chosen because the device offers it.
    net_services("net-services-pc-packed", "pc", "qboot",
                 NetCard("pci-modern", ring="packed", features=("RING_PACKED", "NET_MRG_RXBUF")),
                 props=",disable-legacy=on,packed=on"),
    # Legacy PCI without MRG_RXBUF: the 10-byte header, QUEUE_PFN rings.
    net_services("net-services-pc-legacy-no-mrg", "pc", "qboot",
                 NetCard("pci-legacy", features=("NET_MAC", "ANY_LAYOUT"),
                         features_absent=("NET_MRG_RXBUF", "VERSION_1", "BAD_FEATURE"), header_len=10),
                 props=",disable-modern=on,mrg_rxbuf=off"),
    # virtio-mmio v1 with small rings and 256-byte receive buffers: every
    # full-size frame arrives merged from several buffers (num_buffers).
    net_services("net-services-microvm-mmio-v1-small", "microvm", None,
                 NetCard("mmio-v1", features=("NET_MRG_RXBUF",)),
                 extra_args=["-M", "acpi=off"], append="net.qsize=8 net.rxbuf=256",
                 expect_merged=True),
    # virtio-mmio v2 without the control queue (ctrl_vq=off): two queues.
    net_selftest("net-selftest-microvm-mmio-v2-no-ctrl", "microvm", None,
                 [(NetCard("mmio-v2", queues=2, features_absent=("NET_CTRL_VQ", "NET_CTRL_RX")),
                   ",ctrl_vq=off")],
                 extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"],
                 forbid=[r"^selftest: \S+ net: promiscuous"]),
    # A user-network NIC and two NICs on one hub (one without MRG_RXBUF):
    # DHCP, ARP, ping, frames across the hub, the control queue.
    net_selftest("net-selftest-pc-hub", "pc", "qboot",
                 [(NetCard("pci-modern", features=NET_MODERN_FEATURES), ""),
                  (NetCard("pci-modern", mac="52:54:00:00:00:11"), ""),
                  (NetCard("pci-modern", mac="52:54:00:00:00:12", features_absent=("NET_MRG_RXBUF",)),
                   ",mrg_rxbuf=off")],
                 hub_pairs=1),
]

SCENARIOS += NET_SCENARIOS


# ---------------------------------------------------------------- the packed ring
#
# `packed=on` on modern-only PCI devices (`disable-legacy=on`): the device
# drivers (blk, net, console) accept VIRTIO_F_RING_PACKED and build packed
# queues unless `virtio.ring=split` on the command line says otherwise
# (docs/08-packed-ring.md). Their self-tests must pass over those rings: the
# disks' GET_ID serials and reads, DHCP / ARP / ping through the NIC, the
# console handshake and a line on port 0 (found in the console's output
# file). Each device's one `virtio:` line must name the ring layout the
# driver really used, and the ring features the device options leave. The
# raw-ring self-tests before the drivers claim the devices still use split
# rings (the generic bring-up never accepts RING_PACKED).

PACKED = ",disable-legacy=on,packed=on"
#: The device-driver self-tests that run over the driver's rings.
DRIVER_SELFTESTS = [
    r"^selftest: PASS block: disk serials \(GET_ID\) match expect\.blk\.serial=$",
    r"^selftest: PASS block: every disk reads; bad requests are refused before the device$",
    r"^selftest: PASS block: request counters agree ",
    *NET_SELFTESTS_BASIC,
    r"^selftest: PASS console: the driver claims the console, runs the handshake and writes port 0$",
]


def packed_devs(
    ring: str,
    props: str = PACKED,
    blk_props: str = "",
    net_props: str = "",
    console_props: str = "",
    present: Mapping[str, tuple[str, ...]] | None = None,
    absent: Mapping[str, tuple[str, ...]] | None = None,
) -> list[VirtioDev]:
    """blk, net and console on modern PCI with `props` (plus per-device extras);
    each must come up with `ring` and the features in `present` / not in `absent`."""
    present = present or {}
    absent = absent or {}
    ring_feature = ("RING_PACKED",) if ring == "packed" else ()
    no_ring_feature = ("RING_PACKED",) if ring == "split" else ()
    extra = {"blk": blk_props, "net": net_props, "console": console_props}
    return [
        VirtioDev(kind, "pci-modern", props + extra[kind], ring=ring,
                  features=ring_feature + present.get(kind, ()),
                  features_absent=no_ring_feature + absent.get(kind, ()))
        for kind in ("blk", "net", "console")
    ]


def packed_scenario(name: str, devs: Sequence[VirtioDev], ring_choice: str | None,
                    machine: str = "q35") -> Scenario:
    """`virtio_probe` with `virtio.ring=<ring_choice>` (none: the default) and
    the drivers' self-tests required; the console driver's line must reach
    the console's output file."""
    base = virtio_probe(name, machine, "qboot", "tcg", devs)
    probe_check = check_virtio_lines(devs)

    def check(outcome: Outcome) -> Iterable[str]:
        problems = list(probe_check(outcome) or [])
        assert outcome.ctx is not None
        for i, dev in enumerate(devs):
            path = outcome.ctx.file(f"console{i}.log")
            if dev.kind == "console":
                text = path.read_text("utf-8", "replace") if path.exists() else ""
                if re.search(r"^console: driver self-test on port 0 ", text, re.MULTILINE) is None:
                    problems.append(f"console{i}.log lacks the console driver's line: {text!r}")
        return problems

    append = base.append + (f" virtio.ring={ring_choice}" if ring_choice else "")
    return replace(base, append=append, expect_anywhere=[*base.expect_anywhere, *DRIVER_SELFTESTS],
                   check=check)


#: Ring features each driver accepts when offered (console: never indirect).
EVENT_IDX_ALL = {"blk": ("RING_EVENT_IDX",), "net": ("RING_EVENT_IDX",), "console": ("RING_EVENT_IDX",)}
INDIRECT_OFF_ALL = {"blk": ("RING_INDIRECT_DESC",), "net": ("RING_INDIRECT_DESC",),
                    "console": ("RING_INDIRECT_DESC",)}

PACKED_SCENARIOS: list[Scenario] = [
    # virtio.ring=packed, event index and indirect descriptors on (QEMU's default).
    packed_scenario("packed-q35-ring-packed",
                    packed_devs("packed", present={**EVENT_IDX_ALL, "blk": ("RING_EVENT_IDX", "RING_INDIRECT_DESC"),
                                                   "net": ("RING_EVENT_IDX", "RING_INDIRECT_DESC")}),
                    "packed"),
    # The same device options with virtio.ring=split: every driver stays split.
    packed_scenario("packed-q35-ring-split",
                    packed_devs("split", present={**EVENT_IDX_ALL, "blk": ("RING_EVENT_IDX", "RING_INDIRECT_DESC"),
                                                  "net": ("RING_EVENT_IDX", "RING_INDIRECT_DESC")}),
                    "split"),
    # Event index and indirect descriptors both off: plain packed rings.
    packed_scenario("packed-q35-no-event-idx-no-indirect",
                    packed_devs("packed", props=PACKED + ",event_idx=off,indirect_desc=off",
                                absent={k: ("RING_EVENT_IDX", "RING_INDIRECT_DESC") for k in DRIVER_QUEUES}),
                    "packed"),
    # One of the two on each (blk: indirect only, net: event index only,
    # console: neither), with the default virtio.ring=auto, on pc.
    packed_scenario("packed-pc-mixed-auto",
                    packed_devs("packed", blk_props=",event_idx=off", net_props=",indirect_desc=off",
                                console_props=",event_idx=off",
                                present={"blk": ("RING_INDIRECT_DESC",), "net": ("RING_EVENT_IDX",)},
                                absent={"blk": ("RING_EVENT_IDX",), "net": ("RING_INDIRECT_DESC",),
                                        "console": ("RING_EVENT_IDX", "RING_INDIRECT_DESC")}),
                    None, machine="pc"),
]


def with_virtio_lines(scenario: Scenario, devs: Sequence[VirtioDev]) -> Scenario:
    """`scenario` whose check also holds its `virtio:` lines to `devs`."""
    first, lines = scenario.check, check_virtio_lines(devs)

    def check(outcome: Outcome) -> Iterable[str]:
        return [*(first(outcome) if first else []), *lines(outcome)]

    return replace(scenario, check=check)


PACKED_SCENARIOS += [
    # The block layer's scratch workload (offsets, sizes, queue depths up to
    # the queue size, the largest request, flush / write-zeroes / discard)
    # over a packed ring, the image checked byte for byte afterwards.
    with_virtio_lines(
        blk_scenario("blk-packed-scratch", "q35", "pci-modern",
                     [BlkDrive("scratch0", props=PACKED, want={"features": ("RING_PACKED", "RING_EVENT_IDX")})],
                     append="virtio.ring=packed blk.workload=quick"),
        [VirtioDev("blk", "pci-modern", ring="packed", features=("RING_PACKED",))],
    ),
]

SCENARIOS += PACKED_SCENARIOS


# ---------------------------------------------------------------- the benchmark's peer hand-overs
#
# `x.py bench` measures; this only checks, briefly, that `bench=net` and
# `bench=console` hand their devices to virtio-drivers and back: two rounds
# (so our drivers run again on devices that went through the peer), 0.1 s of
# frames and 1 MiB per stack and round, under TCG. Every frame sent by
# either stack must arrive, and the console file must hold exactly both
# stacks' bytes. Speeds are not looked at.

BENCH_CONSOLE_FILE = "bench-console.out"


def bench_peer_devices(ctx: RunContext) -> list[str]:
    return [
        "-netdev", "hubport,id=h0,hubid=0", "-netdev", "hubport,id=h1,hubid=0",
        "-device", "virtio-net-pci,netdev=h0,mac=52:54:00:00:00:21,disable-legacy=on,romfile=",
        "-device", "virtio-net-pci,netdev=h1,mac=52:54:00:00:00:22,disable-legacy=on,romfile=",
        "-device", "virtio-serial-pci,disable-legacy=on",
        "-chardev", f"file,id=benchcon,path={ctx.file(BENCH_CONSOLE_FILE)}",
        "-device", "virtconsole,chardev=benchcon",
    ]  # fmt: skip


def check_bench_peer(outcome: Outcome) -> list[str]:
    """Both stacks ran twice on each device; nothing lost, every byte in place."""
    _, rows, errors, done = bench_compare.parse_bench_lines(outcome.log_text)
    problems = [f"bench: error {e}" for e in errors] + ([] if done else ["no `bench: done`"])
    for name in ("net.pps.poll", "net.pps.peer", "console.write", "console.write.peer"):
        runs = [r for r in rows if r["name"] == name]
        if len(runs) != 2:
            problems.append(f"{len(runs)} `{name}` line(s), 2 expected")
    for run in (r for r in rows if str(r["name"]).startswith("net.pps.")):
        sent, received = run.get("sent"), run.get("received")
        if not isinstance(sent, int) or sent <= 0 or received != sent or run.get("lost") != 0:
            problems.append(f"{run['name']}: sent={sent} received={received} lost={run.get('lost')}")
    assert outcome.ctx is not None
    out = outcome.ctx.file(BENCH_CONSOLE_FILE)
    problems += bench_compare.check_console_file(out.read_bytes() if out.exists() else b"", rows)
    return problems


SCENARIOS += [
    Scenario(
        name="bench-peer-net-console-tcg",
        machine="pc",
        accel="tcg",
        devices=bench_peer_devices,
        append="mode=bench bench=net,console bench.seconds=0.1 bench.repeat=2 bench.console_mib=1",
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=[r"^bench: net\.peer\.setup ", r"^bench: console\.peer\.setup ",
                         r"^bench: console\.total stack=both ", r"^bench: done$"],
        timeout_s=60.0,
        check=check_bench_peer,
    ),
]

from .scenarios_screen import SCREEN_SCENARIOS  # noqa: E402  (screen and keyboard: issue 21)
SCENARIOS += SCREEN_SCENARIOS

# The live queue view in a real browser (issue 16): tests/qemu/queue_view.py.
SCENARIOS += queue_view.SCENARIOS

from .scenarios_resize import RESIZE_SCENARIOS  # noqa: E402 - needs the helpers above

SCENARIOS += RESIZE_SCENARIOS

from .scenarios_net_stress import NET_STRESS_SCENARIOS  # noqa: E402  (network under load: issue 18)
SCENARIOS += NET_STRESS_SCENARIOS

# Smoke runs of `x.py bench --section cost` and `--section net-host`.
from .scenarios_bench import SCENARIOS as BENCH_SMOKE_SCENARIOS  # noqa: E402

SCENARIOS += BENCH_SMOKE_SCENARIOS

from .scenarios_faults import FAULT_SCENARIOS  # noqa: E402  (blkdebug errors, a disk that stops answering)
SCENARIOS += FAULT_SCENARIOS

from .soak import SOAK_SCENARIOS  # noqa: E402  (soak-short: block I/O under network load)
SCENARIOS += SOAK_SCENARIOS

from .scenarios_rng import RNG_SCENARIOS  # noqa: E402  (issue 20: virtio-rng, entropy)
SCENARIOS += RNG_SCENARIOS

from .scenarios_9p import P9_SCENARIOS  # noqa: E402  (issue 20: virtio-9p)
SCENARIOS += P9_SCENARIOS

from .scenarios_balloon import BALLOON_SCENARIOS  # noqa: E402  (issue 20: virtio-balloon)
SCENARIOS += BALLOON_SCENARIOS

# DMA isolation behind QEMU's intel-iommu (tests/qemu/scenarios_iommu.py).
from .scenarios_iommu import IOMMU_SCENARIOS  # noqa: E402

SCENARIOS += IOMMU_SCENARIOS
from .scenarios_crash import CRASH_SCENARIOS  # noqa: E402  (crash-*: data flushed survives a SIGKILL)
SCENARIOS += CRASH_SCENARIOS
from .scenarios_blk_mq import BLK_MQ_SCENARIOS  # noqa: E402  (issue 22: multiqueue virtio-blk)
SCENARIOS += BLK_MQ_SCENARIOS

from .scenarios_smp import SMP_SCENARIOS  # noqa: E402  (issue 22: SMP bring-up, run_on, crash reports)

SCENARIOS += SMP_SCENARIOS

# Multiqueue virtio-net on a multiqueue tap in a network namespace (tests/qemu/scenarios_net_mq.py).
from .scenarios_net_mq import NET_MQ_SCENARIOS  # noqa: E402

SCENARIOS += NET_MQ_SCENARIOS
