"""DMA isolation scenarios: q35 with QEMU's Intel VT-d (`-device intel-iommu`).

Every virtio device is modern (`disable-legacy=on`) with `iommu_platform=on`, so
it offers VIRTIO_F_ACCESS_PLATFORM and refuses FEATURES_OK unless the driver
accepts it (virtio 1.2 §6.1). `-device intel-iommu` must come before the devices
it covers. QEMU 7.2 needs nothing else under TCG: interrupt remapping is offered
(`intremap=auto` turns on without KVM's in-kernel irqchip) but the kernel never
enables it, so MSIs go straight to the local APIC. Under KVM, `intremap=on`
would need `-machine q35,kernel-irqchip=split`; all but `iommu-strict-kvm-q35` run under TCG.

- `iommu-strict-q35`: blk, net and console behind the IOMMU in strict mode: the
  whole self-test (block data written and checked on the host afterwards, net
  DHCP/ping, console round trips) passes, including the stray-DMA test (a blk
  request aimed at a never-shared page: fault logged and counted, request
  failed, canary page unchanged).
- `iommu-strict-q35` also runs the use-after-unshare test: a page the device
  read into is unshared and the same read is sent again; the IOTLB invalidation
  at unshare must make it fault. And the per-device domain test: each device
  has its own domain (1, 2, 3); a page shared (writable) with another device
  is aimed at by a blk read: the blk device's write must fault, its request
  fail and the page stay unchanged. net and console check for faults as the
  block layer does: a fault armed for each (as if the unit had blocked one of
  its DMAs) fails the console write and is counted once by the next net poll.
- `iommu-strict-kvm-q35`: the same machine under KVM, with
  `-machine kernel-irqchip=split`, which intel-iommu's interrupt remapping
  needs under KVM (QEMU then offers it, ECAP.IR; the kernel leaves it off and
  MSIs, the fault event included, arrive as before; with the default irqchip
  `intremap=auto` is off and the scenario passes too, checked by hand). Stopped after the IOMMU self-tests: on this
  project's nested `kvm_pvm` every ring-0 instruction is emulated and the
  whole self-test takes about 190 s (passing), the IOMMU part about 5 s.
- `iommu-passthrough-q35`: `iommu=passthrough` (translation on, virtio devices
  untranslated): the block self-tests pass and the disk holds what was written.
- `iommu-strict-mixed-q35`: one disk with `iommu_platform=on`, one without:
  the second's DMA bypasses the IOMMU (QEMU gives it the plain address
  space), and its `iommu:` line says it is not isolated; both disks' data are
  checked.
- `iommu-off-q35`: `iommu=off`: the unit stays off; a device that insists on
  ACCESS_PLATFORM still works, untranslated.

The kernel side is kernel/src/iommu/; the book chapter docs/dma-isolation.md.
"""

from __future__ import annotations

import re
from dataclasses import replace

from . import machine as qm
from .harness import KILLED, RunContext, Scenario
from .scenarios import MODERN, BlkDrive, blk_scenario

#: Modern and behind the platform's IOMMU.
BEHIND_IOMMU = MODERN + ",iommu_platform=on"


def iommu_devices(ctx: RunContext) -> list[str]:
    """The IOMMU first, then net and console (blk comes from the drive list)."""
    net = qm.user_net_args("q35")
    net[-1] += BEHIND_IOMMU
    console = ["-chardev", f"file,id=console0,path={ctx.file('console.log')}"]
    console += qm.console_args("q35", "console0")
    console[-3] += BEHIND_IOMMU  # the virtio-serial-pci controller
    return ["-device", "intel-iommu", *net, *console]


def behind_iommu(name: str, mode: str, expect_anywhere: list[str], with_net_console: bool) -> Scenario:
    """A blk scenario (data checked on the host afterwards) on q35 + intel-iommu in `mode`."""
    scenario = blk_scenario(
        name, "q35", "pci-modern",
        [BlkDrive("scratch0", props=BEHIND_IOMMU, want={"features": ("VERSION_1", "ACCESS_PLATFORM")})],
        extra_args=["-device", "intel-iommu"],
        append=f"iommu={mode} expect.iommu={mode}",
        expect_anywhere=[r"^selftest: PASS iommu: the mode in force is expect\.iommu=", *expect_anywhere],
    )  # fmt: skip
    if not with_net_console:
        return scenario
    blk_devices = scenario.devices
    assert callable(blk_devices)

    def devices(ctx: RunContext) -> list[str]:
        return iommu_devices(ctx) + blk_devices(ctx)[2:]  # drop blk_scenario's own intel-iommu

    append = re.sub(r"expect\.virtio=\S+", "expect.virtio=blk:pci-modern,net:pci-modern,console:pci-modern",
                    scenario.append)  # fmt: skip
    return replace(scenario, devices=devices, append=append, timeout_s=60.0)


#: The last of the IOMMU self-tests that need a device (they run before the block,
#: net and console ones).
LAST_IOMMU_TEST = r"^selftest: PASS iommu: a blk DMA to a page shared with another device faults \(a domain per device\)$"


def under_kvm(scenario: Scenario, expect: list[str]) -> Scenario:
    """`scenario`'s boot and IOMMU self-tests under KVM with the split irqchip
    (what intel-iommu's interrupt remapping needs), stopped after them: the nested `kvm_pvm` here
    emulates every ring-0 instruction, so the block data tests that follow take
    minutes (about 190 s for the whole self-test). `expect` replaces the
    block scenario's expectations, and the disk image is not checked."""
    devices = scenario.devices
    assert callable(devices)
    return replace(
        scenario, accel="kvm", timeout_s=60.0, expect_status=KILLED, stop_on=LAST_IOMMU_TEST,
        devices=lambda ctx: ["-machine", "kernel-irqchip=split", *devices(ctx)],
        expect_in_order=[], expect_anywhere=expect, check=None,
    )  # fmt: skip


IOMMU_SCENARIOS: list[Scenario] = [
    behind_iommu(
        "iommu-strict-q35", "strict",
        [
            r"^iommu: net at pci \S+: strict .*, domain 1$",
            r"^iommu: console at pci \S+: strict .*, domain 2$",
            r"^iommu: blk at pci \S+: strict .*, domain 3$",
            r"^\[.*\] WARN kernel::iommu: iommu: DMA fault: device \S+ write at 0x[0-9a-f]+ blocked: ",
            r"^selftest: PASS iommu: share maps the buffer's pages, unshare unmaps them \(strict\)$",
            r"^selftest: PASS iommu: a blk DMA to a never-shared page faults, fails, and leaves it unchanged$",
            r"^selftest: PASS iommu: after unshare the device cannot reach the page \(IOTLB invalidated\)$",
            r"^selftest: PASS iommu: a blk DMA to a page shared with another device faults \(a domain per device\)$",
            r"^selftest: PASS net: ",
            r"^selftest: PASS net: a poll after the IOMMU blocked a DMA of the card fails its traffic, once$",
            r"^selftest: PASS virtio: console round trip",
            r"^selftest: PASS console: a write during which the IOMMU blocked a DMA of the console fails$",
        ],
        with_net_console=True,
    ),
    under_kvm(
        behind_iommu("iommu-strict-kvm-q35", "strict", [], with_net_console=True),
        [
            r"^selftest: PASS iommu: the mode in force is expect\.iommu=",
            r"^iommu: net at pci \S+: strict .*, domain 1$",
            r"^iommu: console at pci \S+: strict .*, domain 2$",
            r"^iommu: blk at pci \S+: strict .*, domain 3$",
            r"^selftest: PASS iommu: share maps the buffer's pages, unshare unmaps them \(strict\)$",
            r"^selftest: PASS iommu: a blk DMA to a never-shared page faults, fails, and leaves it unchanged$",
            r"^selftest: PASS iommu: after unshare the device cannot reach the page \(IOTLB invalidated\)$",
            LAST_IOMMU_TEST,
        ],
    ),
    behind_iommu(
        "iommu-passthrough-q35", "passthrough",
        [r"^iommu: blk at pci \S+: passthrough "],
        with_net_console=False,
    ),
    # One disk behind the IOMMU, one not (no iommu_platform): the second's DMA
    # bypasses the IOMMU, and its `iommu:` line must say so; the DMA tests pick the first.
    blk_scenario(
        "iommu-strict-mixed-q35", "q35", "pci-modern",
        [BlkDrive("scratch0", props=BEHIND_IOMMU, want={"features": ("ACCESS_PLATFORM",)}),
         BlkDrive("scratch1", props=MODERN, want={"features_absent": ("ACCESS_PLATFORM",)})],
        extra_args=["-device", "intel-iommu"],
        append="iommu=strict expect.iommu=strict",
        expect_anywhere=[
            r"^iommu: blk at pci \S+: ACCESS_PLATFORM not negotiated, so its DMA bypasses the IOMMU ",
            r"^selftest: PASS iommu: a blk DMA to a never-shared page faults, fails, and leaves it unchanged$",
        ],
    ),
    behind_iommu(
        "iommu-off-q35", "off",
        [r"^iommu: blk at pci \S+: off \(iommu=off\)"],
        with_net_console=False,
    ),
]  # fmt: skip
