"""A disk grown at run time: QMP `block_resize`, then the shell's `disks`.

virtio 1.2 §2.5: when the device configuration changes the device sends a
configuration change notification, and the driver reads the configuration
again (consistently, through `config_generation`, §4.1.4.3). QEMU's
`block_resize` changes a virtio-blk disk's `capacity` and sends one. The
scenario boots the production kernel with the shell on the console and one
1 MiB disk, checks that `disks` reports 2048 sectors, grows the disk to
3 MiB over QMP (`tests/qemu/qmp.py`), and checks that `blk read` (the
per-queue path, `kernel/src/block/queue_path.rs`) then reaches a sector
beyond the old end, that `disks` reports 6144 sectors, and that the kernel
logged the change (`block: vda: configuration changed`).

Twice: modern virtio-pci with MSI-X (the configuration vector) and legacy
virtio-pci without MSI-X (`vectors=0`: the ISR's CONFIG bit on INTx).
"""

from __future__ import annotations

import time

from . import machine as qm
from .harness import RunContext, Scenario
from .qmp import Qmp, qmp_args
from .scenarios import BOOT_BANNER, MiB, console_devices, probe_image

#: The disk before and after `block_resize`, in bytes.
SIZE_BEFORE = 1 * MiB
SIZE_AFTER = 3 * MiB


def resize_devices(machine: str, blk_props: str):
    """The shell's console, one disk with a QMP node name, and the QMP socket."""
    console = console_devices(machine, named_port=False)

    def devices(ctx: RunContext) -> list[str]:
        args = ["-blockdev", f"driver=file,node-name=disk0,filename={ctx.file('disk0.img')}"]
        args += ["-device", f"{qm.virtio_device('virtio-blk', machine)},drive=disk0,serial=disk0{blk_props}"]
        args += qmp_args(ctx.file("qmp.sock"))
        return args + console(ctx)

    return devices


def resize_session(ctx: RunContext) -> list[str]:
    """`disks`, `block_resize` over QMP, `disks` again until the size shows."""
    from .console_session import Shell

    problems: list[str] = []
    shell = Shell(ctx.file("console.sock"))
    # The first prompt can be lost: the shell holds output while QEMU says the
    # port is closed, but a console port is written regardless once QEMU has
    # named it one, and QEMU drops bytes for a socket not yet connected.
    try:
        shell.wait_prompt(timeout_s=5)
    except AssertionError:
        shell.type(b"\r", timeout_s=10)
    before = SIZE_BEFORE // 512
    after = SIZE_AFTER // 512
    text = shell.run("disks")
    if f'serial "disk0", {before} sectors' not in text:
        problems.append(f"before the resize: {text!r}")
    qmp = Qmp(ctx.file("qmp.sock"))
    try:
        qmp.execute("block_resize", **{"node-name": "disk0", "size": SIZE_AFTER})
    finally:
        qmp.close()
    # `blk read` first, before anything that takes the whole disk: the
    # per-queue path must notice the change itself (by handing the read to
    # the whole-disk path). The configuration interrupt arrives at once;
    # allow the guest a moment.
    deadline = time.monotonic() + 10
    while True:
        text = shell.run(f"blk read vda {after - 1}")
        if "error" not in text and text.count("\n") == 32:
            break
        if time.monotonic() > deadline:
            problems.append(f"blk read beyond the old end after block_resize: {text[:300]!r}")
            break
        time.sleep(0.2)
    text = shell.run("disks")
    if f'serial "disk0", {after} sectors' not in text:
        problems.append(f"after block_resize to {after} sectors: {text!r}")
    shell.send(b"poweroff\r")
    shell.read_until(b"powering off")
    return problems


def resize_scenario(name: str, machine: str, blk_props: str) -> Scenario:
    return Scenario(
        name=name,
        machine=machine,
        firmware="qboot",
        accel="tcg",
        devices=resize_devices(machine, blk_props),
        files={"disk0.img": probe_image("disk0")},
        append="log=info",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[BOOT_BANNER, r"^shell: ready on virtio console port 0 ",
                         r"INFO \S+: block: vda: configuration changed: 6144 sectors$",
                         r"^shell: poweroff$"],
        timeout_s=60.0,
        interact=resize_session,
    )


RESIZE_SCENARIOS: list[Scenario] = [
    resize_scenario("blk-resize-qmp-q35-modern", "q35", ",disable-legacy=on"),
    resize_scenario("blk-resize-qmp-pc-legacy-intx", "pc", ",disable-modern=on,vectors=0"),
]
