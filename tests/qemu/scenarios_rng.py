"""QEMU scenarios for virtio-rng and the kernel's entropy source (issue 20).

The device's backend is `-object rng-random` reading a file of random bytes
the scenario writes (`entropy.bin`), so the host knows every byte the
device hands out, in order:

- the network stack's seed (`entropy: net0 seeded with 0x... from
  virtio-rng`, logged at info level) must be the file's first 8 bytes,
  little-endian: smoltcp's randomness (TCP initial sequence numbers, DHCP
  transaction ids, ephemeral ports) comes from the device;
- `rng <n>` at the shell prints bytes that come next in the file, and two
  calls print different bytes.

One boot per transport: modern PCI (the shell session), legacy PCI,
virtio-mmio v1 and v2 (v2 with `virtio.ring=packed`). Two more boots without
the device check the fallback: QEMU's default `qemu64` CPU under TCG has no
RDRAND/RDSEED (the TSC, with a warning); `-cpu max` has RDRAND (and, in
QEMU 7.2's TCG, no RDSEED).

Each boot but the shell's stops as soon as the seed line is out; the six
add about 10 s under TCG.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from . import machine as qm
from .harness import DEFAULT_FORBID, KILLED, Outcome, RunContext, Scenario

#: The backend file: more than the kernel reads in any of these boots.
ENTROPY_FILE = "entropy.bin"
ENTROPY_BYTES = 64 * 1024

BOOT_BANNER = r"^kernel: booting \(PVH\)"
SEED_LINE = re.compile(r"entropy: net0 seeded with 0x(?P<seed>[0-9a-f]{16}) from (?P<source>.+)$", re.MULTILINE)
RNG_LINE = re.compile(
    r"^virtio: rng at (?P<location>pci \S+|mmio@0x[0-9a-f]+) transport=(?P<transport>\S+) "
    r"ring=(?P<ring>\S+) queues=(?P<queues>\d+) features=(?P<features>\S+)$",
    re.MULTILINE,
)


def entropy_file(path: Path) -> None:
    """A `files` generator: the device's random bytes."""
    path.write_bytes(os.urandom(ENTROPY_BYTES))


def rng_args(ctx: RunContext, machine: str, props: str = "") -> list[str]:
    """A virtio-rng device reading `entropy.bin`."""
    return [
        "-object", f"rng-random,id=rng0,filename={ctx.file(ENTROPY_FILE)}",
        "-device", f"{qm.virtio_device('virtio-rng', machine)},rng=rng0{props}",
    ]


def check_rng(transport: str, ring: str = "split") -> Callable[[Outcome], Iterable[str]]:
    """One `virtio: rng` line with the driver's facts; the network seed is
    the file's first 8 bytes and came from virtio-rng."""

    def check(outcome: Outcome) -> Iterable[str]:
        problems: list[str] = []
        lines = list(RNG_LINE.finditer(outcome.log_text))
        if len(lines) != 1:
            return [f"expected one `virtio: rng` line with the driver's facts, got {len(lines)}"]
        line = lines[0]
        features = line["features"].split("|")
        if line["transport"] != transport:
            problems.append(f"{line[0]!r}: transport is not {transport}")
        if line["ring"] != ring:
            problems.append(f"{line[0]!r}: ring is not {ring}")
        if line["queues"] != "1":
            problems.append(f"{line[0]!r}: virtio-rng has one queue (§5.4.2)")
        if ("VERSION_1" in features) != (transport in ("pci-modern", "mmio-v2")):
            problems.append(f"{line[0]!r}: VERSION_1 must be negotiated exactly on modern transports")
        for never in ("BAD_FEATURE", "RING_INDIRECT_DESC"):
            if never in features:
                problems.append(f"{line[0]!r}: {never} accepted")
        if f"entropy: source virtio-rng (rng at {line['location']})" not in outcome.log_text:
            problems.append("no `entropy: source virtio-rng` line naming the device")
        assert outcome.ctx is not None
        given = outcome.ctx.file(ENTROPY_FILE).read_bytes()
        seed = SEED_LINE.search(outcome.log_text)
        if seed is None:
            problems.append("no `entropy: net0 seeded with` line")
        elif seed["source"] != "virtio-rng" or int(seed["seed"], 16) != int.from_bytes(given[:8], "little"):
            problems.append(f"the network seed {seed[0]!r} is not the device's first 8 bytes "
                            f"{int.from_bytes(given[:8], 'little'):#018x}")
        return problems

    return check


def rng_boot(name: str, machine: str, transport: str, props: str = "", extra_args: Sequence[str] = (),
             append: str = "log=info", ring: str = "split") -> Scenario:
    """A normal boot with a NIC and the rng device, stopped once the network is seeded."""

    def devices(ctx: RunContext) -> list[str]:
        return list(extra_args) + qm.user_net_args(machine) + rng_args(ctx, machine, props)

    return Scenario(
        name=name,
        machine=machine,
        firmware=None if machine == "microvm" else "qboot",
        accel="tcg",
        devices=devices,
        files={ENTROPY_FILE: entropy_file},
        append=append,
        expect_status=KILLED,
        stop_on=r"entropy: net0 seeded with ",
        expect_in_order=[BOOT_BANNER, r"^virtio: rng at ", r"^entropy: source virtio-rng "],
        forbid=[*DEFAULT_FORBID, r"^virtio: .* FAILED: ", r"WARN kernel::entropy"],
        timeout_s=30.0,
        check=check_rng(transport, ring),
    )


def rng_session(ctx: RunContext) -> list[str]:
    """`rng` at the shell: the bytes are the device's, two calls differ, bad input is refused."""
    from .console_session import Shell

    problems: list[str] = []
    shell = Shell(ctx.file("console.sock"))
    try:
        # The banner and prompt go out when the shell starts; if that was
        # before we connected, they are lost: ask for a fresh prompt.
        shell.wait_prompt(timeout_s=5)
    except AssertionError:
        shell.type(b"\r", timeout_s=30)
    given = ctx.file(ENTROPY_FILE).read_bytes()
    outputs = []
    for n in (16, 64):
        text = shell.run(f"rng {n}")
        hex_lines = re.findall(r"^([0-9a-f]+)$", text, re.MULTILINE)
        data = bytes.fromhex("".join(hex_lines))
        if len(data) != n or f"({n} bytes from virtio-rng)" not in text:
            problems.append(f"rng {n}: {text!r}")
        elif data not in given[8:]:
            problems.append(f"rng {n}: {data.hex()} is not from the device's bytes after the seed")
        outputs.append(data)
    if len(outputs) == 2 and outputs[0] == outputs[1][:16]:
        problems.append("two `rng` calls printed the same bytes")
    for bad in ("rng", "rng 0", "rng 4097", "rng many"):
        text = shell.run(bad)
        if "error:" not in text:
            problems.append(f"{bad!r} is not refused: {text!r}")
    shell.send(b"poweroff\r")
    shell.read_until(b"powering off")
    return problems


def rng_shell(name: str, machine: str, transport: str, props: str = "") -> Scenario:
    """The shell's `rng` on a modern PCI device, with the NIC seeded from it."""

    def devices(ctx: RunContext) -> list[str]:
        args = qm.user_net_args(machine) + rng_args(ctx, machine, props)
        args += ["-chardev", f"socket,id=con,path={ctx.file('console.sock')},server=on,wait=off"]
        args += ["-device", f"{qm.virtio_device('virtio-serial', machine)},id=vser0"]
        args += ["-device", "virtconsole,chardev=con,bus=vser0.0"]
        return args

    return Scenario(
        name=name,
        machine=machine,
        accel="tcg",
        devices=devices,
        files={ENTROPY_FILE: entropy_file},
        append="log=info",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[BOOT_BANNER, r"^entropy: source virtio-rng ", r"^kernel: ready$",
                         r"^shell: poweroff$"],
        forbid=[*DEFAULT_FORBID, r"^virtio: .* FAILED: ", r"WARN kernel::entropy"],
        timeout_s=60.0,
        check=check_rng(transport),
        interact=rng_session,
    )


def fallback(name: str, cpu_args: Sequence[str], source: str, warning: bool) -> Scenario:
    """No virtio-rng: the kernel names its fallback and seeds the network from it."""

    def check(outcome: Outcome) -> list[str]:
        problems = []
        seed = SEED_LINE.search(outcome.log_text)
        if seed is None or seed["source"] != source:
            problems.append(f"the network seed does not come from {source}: {seed[0] if seed else None!r}")
        if re.search(r"^virtio: rng ", outcome.log_text, re.MULTILINE):
            problems.append("a `virtio: rng` line without a device")
        return problems

    if warning:
        said = r"WARN kernel::entropy: entropy: no virtio-rng and no RDRAND/RDSEED: falling back to the TSC"
    else:
        said = rf"^entropy: no virtio-rng; source {source} \(CPU instruction\)$"
    return Scenario(
        name=name,
        machine="q35",
        accel="tcg",
        devices=lambda ctx: list(cpu_args) + qm.user_net_args("q35"),
        append="log=info",
        expect_status=KILLED,
        stop_on=r"entropy: net0 seeded with ",
        expect_in_order=[BOOT_BANNER, said],
        timeout_s=30.0,
        check=check,
    )


RNG_SCENARIOS: list[Scenario] = [
    rng_shell("rng-q35-pci-modern-shell", "q35", "pci-modern", ",disable-legacy=on"),
    rng_boot("rng-pc-pci-legacy", "pc", "pci-legacy", ",disable-modern=on"),
    rng_boot("rng-microvm-mmio-v1", "microvm", "mmio-v1", extra_args=["-M", "acpi=off"]),
    rng_boot("rng-microvm-mmio-v2-packed", "microvm", "mmio-v2", ",packed=on",
             extra_args=["-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false"],
             append="log=info virtio.ring=packed", ring="packed"),
    fallback("rng-fallback-tsc", [], "TSC (not random)", warning=True),
    fallback("rng-fallback-rdrand", ["-cpu", "max"], "RDRAND", warning=False),
]
