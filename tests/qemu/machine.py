"""Building QEMU command lines for the kernel.

One place knows how to turn "q35 with qboot under KVM, with the usual virtio
devices" into `qemu-system-x86_64` arguments, so that `x.py run`,
`x.py qemu-cmd` and the test scenarios agree.

Facts this relies on are in `shared/QEMU.md` (checked on QEMU 7.2):
- `-cpu host` aborts under nested KVM here ("failed to set MSR 0x10a");
  `-cpu host,-arch-capabilities` works.
- qboot boots pc/q35 in ~0.1 s under KVM where SeaBIOS takes 3-4 s, but
  qboot does not assign PCI BARs (the kernel does).
- microvm has no PCI: virtio devices are `virtio-*-device` on virtio-mmio,
  and it always boots with its own qboot (`bios-microvm.bin`).
- `-device isa-debug-exit,iobase=0xf4,iosize=4` turns a guest write of v to
  port 0xf4 into QEMU exit status (v << 1) | 1.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"

MACHINES = ("pc", "q35", "microvm")
FIRMWARES = ("seabios", "qboot")
ACCELS = ("kvm", "tcg")

#: QEMU exit status for each value the kernel writes to isa-debug-exit
#: (status = value * 2 + 1). See docs/contract.md, "Exit codes".
EXIT_SELFTEST_PASS = 33  # 0x10
EXIT_SELFTEST_FAIL = 35  # 0x11
EXIT_PANIC = 37  # 0x12
EXIT_EXCEPTION = 39  # 0x13
EXIT_POWEROFF = 41  # 0x14: the shell's `poweroff`

DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=4"

#: Guest MAC of the standard virtio-net device (QEMU's usual 52:54:00 prefix).
STANDARD_MAC = "52:54:00:12:34:56"


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator a boot will really use, and why."""

    name: str  # "kvm" or "tcg"
    requested: str  # "kvm", "tcg" or "auto"
    reason: str  # human-readable, e.g. "/dev/kvm cannot be opened read-write (...)"
    #: KVM was asked for (explicitly or by "auto") but /dev/kvm is unusable.
    fell_back: bool = False


_kvm_probe_lock = threading.Lock()
_kvm_probe_result: tuple[bool, str] | None = None


def kvm_usable() -> tuple[bool, str]:
    """Whether /dev/kvm can be opened read-write (the test QEMU itself makes)."""
    global _kvm_probe_result
    with _kvm_probe_lock:
        if _kvm_probe_result is None:
            try:
                fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
            except OSError as err:
                _kvm_probe_result = (False, f"/dev/kvm cannot be opened read-write ({err.strerror})")
            else:
                os.close(fd)
                _kvm_probe_result = (True, "/dev/kvm is usable")
        return _kvm_probe_result


def kvm_emulates_ring0() -> str | None:
    """Why this host's KVM cannot run our kernel at speed, or None if it can.

    The nested `kvm_pvm` module (PVM, "Pagetable-based Virtual Machine") has
    no VMX/SVM underneath: it runs guest user mode (CPL 3) on the CPU, but
    a guest kernel that does not speak the PVM paravirtual ABI executes at
    CPL 0 instruction by instruction in KVM's x86 emulator (about one
    million instructions per second here, several hundred times slower than
    TCG). Cache and MTRR settings in the guest make no difference.
    """
    if os.path.isdir("/sys/module/kvm_pvm"):
        return "host KVM is kvm_pvm, which emulates every ring-0 guest instruction"
    return None


def choose_accel(requested: str, tcg_only: bool = False) -> AccelChoice:
    """Resolve "kvm" / "tcg" / "auto" to what will run on this machine.

    KVM is used only when /dev/kvm opens read-write; otherwise TCG, with the
    reason recorded so that the caller can say so. "auto" also prefers TCG
    when the host's KVM would emulate the kernel (see `kvm_emulates_ring0`);
    an explicit "kvm" is still honoured.
    """
    if requested not in ("kvm", "tcg", "auto"):
        raise ValueError(f"unknown accelerator {requested!r}")
    if requested == "tcg":
        return AccelChoice("tcg", requested, "TCG requested")
    if tcg_only:
        return AccelChoice("tcg", requested, "--tcg-only")
    slow_kvm = kvm_emulates_ring0()
    if requested == "auto" and slow_kvm is not None:
        return AccelChoice("tcg", requested, slow_kvm, fell_back=True)
    ok, why = kvm_usable()
    if ok:
        return AccelChoice("kvm", requested, why)
    return AccelChoice("tcg", requested, why, fell_back=True)


def accel_args(accel: AccelChoice) -> list[str]:
    if accel.name == "kvm":
        # -cpu host alone aborts here (MSR 0x10a, IA32_ARCH_CAPABILITIES).
        return ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    # TCG keeps QEMU's default CPU model (qemu64): a second, plainer CPU.
    return ["-accel", "tcg"]


def default_firmware(machine: str) -> str | None:
    """microvm has no firmware choice; pc and q35 default to the fast qboot."""
    return None if machine == "microvm" else "qboot"


def firmware_args(machine: str, firmware: str | None) -> list[str]:
    if machine == "microvm":
        if firmware not in (None, "qboot"):
            raise ValueError("microvm always boots with its own qboot; --firmware is for pc and q35")
        return []
    if firmware in (None, "seabios"):
        return []  # SeaBIOS is QEMU's default for pc and q35
    if firmware == "qboot":
        # QEMU looks the name up in its data directory (/usr/share/qemu).
        return ["-bios", "qboot.rom"]
    raise ValueError(f"unknown firmware {firmware!r} (choose from {', '.join(FIRMWARES)})")


def virtio_device(kind: str, machine: str) -> str:
    """`virtio-blk` -> `virtio-blk-pci` on pc/q35, `virtio-blk-device` (mmio) on microvm."""
    return f"{kind}-device" if machine == "microvm" else f"{kind}-pci"


def base_args(
    kernel: Path | str,
    machine: str,
    firmware: str | None,
    accel: AccelChoice,
    append: str = "",
    memory: str = "256M",
    debug_exit: bool = True,
) -> list[str]:
    """QEMU, machine, firmware, accelerator, memory, kernel: everything but devices and I/O.

    `-nodefaults` keeps QEMU from adding its default NIC, VGA, CD-ROM and
    floppy, so a scenario sees exactly the devices it lists.
    """
    if machine not in MACHINES:
        raise ValueError(f"unknown machine {machine!r} (choose from {', '.join(MACHINES)})")
    args = [QEMU, "-M", machine]
    args += firmware_args(machine, firmware)
    args += accel_args(accel)
    args += ["-m", memory, "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none"]
    args += ["-kernel", str(kernel)]
    if append:
        args += ["-append", append]
    if debug_exit:
        args += ["-device", DEBUG_EXIT_DEVICE]
    return args


def scratch_disk_args(machine: str, image: Path | str, drive_id: str = "scratch0") -> list[str]:
    """A raw image as a virtio-blk disk whose serial starts with `scratch`.

    The kernel only writes to disks whose virtio-blk serial starts with
    `scratch`; all others are read-only to it.
    """
    return [
        "-drive", f"if=none,id={drive_id},format=raw,file={image}",
        "-device", f"{virtio_device('virtio-blk', machine)},drive={drive_id},serial={drive_id}",
    ]  # fmt: skip


def user_net_args(
    machine: str,
    hostfwd: Sequence[tuple[int, int]] = (),
    netdev_id: str = "net0",
    mac: str = STANDARD_MAC,
) -> list[str]:
    """User-mode (slirp) networking on a virtio-net device.

    `hostfwd` is a list of (host port, guest port) TCP pairs, bound to
    127.0.0.1 on the host. `romfile=` keeps SeaBIOS from loading iPXE.
    """
    netdev = f"user,id={netdev_id}"
    for host_port, guest_port in hostfwd:
        netdev += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
    device = f"{virtio_device('virtio-net', machine)},netdev={netdev_id},mac={mac}"
    if machine != "microvm":
        device += ",romfile="  # a PCI property: no option ROM
    return ["-netdev", netdev, "-device", device]


def console_args(machine: str, chardev: str) -> list[str]:
    """A virtio-serial controller with a virtio console (port 0) on `chardev`."""
    return [
        "-device", f"{virtio_device('virtio-serial', machine)},id=vser0",
        "-device", f"virtconsole,chardev={chardev},bus=vser0.0",
    ]  # fmt: skip


def create_raw_image(path: Path, size: int) -> None:
    """Create a sparse raw disk image of `size` bytes if it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return
    with open(path, "wb") as image:
        image.truncate(size)


# Ports handed out in this process, so two scenarios starting at the same
# moment never get the same one even if neither has bound it yet.
_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a `hostfwd=` rule."""
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def port_is_free(port: int) -> bool:
    """Whether a TCP listener could bind 127.0.0.1:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
