"""QEMU scenarios for virtio-balloon (issue 20).

A 256 MiB guest with the shell on the console, a balloon (`id=balloon0`)
and QMP on `qmp.sock`. The session:

1. `mem` at the shell: free and total memory, balloon empty;
2. QMP `balloon` to half the memory: the kernel inflates to the new target
   (`mem` polled until the balloon holds it; the time it took is printed),
   QMP `query-balloon` reports the new size, and the kernel's free memory
   went down by exactly the balloon's size;
3. statistics: `guest-stats-polling-interval` set, then `qom-get
   guest-stats` must carry the kernel's free and total memory;
4. QMP `balloon` back to all of it: the balloon empties and free memory
   is back where it started.

On modern PCI, legacy PCI and virtio-mmio v2 (with a packed ring); about a
second each under TCG.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from . import machine as qm
from .harness import DEFAULT_FORBID, RunContext, Scenario

MiB = 1024 * 1024
MEMORY_MIB = 256
PAGE = 4096
MEM_LINE = re.compile(r"memory: free (\d+) total (\d+)")
BALLOON_LINE = re.compile(r"balloon at .*: (\d+) pages \(\d+ MiB\), target (-?\d+) pages, stats answered (\d+)")


def session(report: Callable[[str], None]) -> Callable[[RunContext], list[str]]:
    def interact(ctx: RunContext) -> list[str]:
        from .console_session import Shell
        from .qmp import Qmp

        problems: list[str] = []
        shell = Shell(ctx.file("console.sock"))
        try:
            # The banner and prompt go out when the shell starts; if that was
            # before we connected, they are lost: ask for a fresh prompt.
            shell.wait_prompt(timeout_s=5)
        except AssertionError:
            shell.type(b"\r", timeout_s=30)
        qmp = Qmp(ctx.file("qmp.sock"))

        def mem() -> tuple[int, int, int, int]:
            text = shell.run("mem")
            m, b = MEM_LINE.search(text), BALLOON_LINE.search(text)
            if m is None or b is None:
                raise AssertionError(f"mem: {text!r}")
            return int(m[1]), int(m[2]), int(b[1]), int(b[2])

        def follow(target_pages: int) -> tuple[int, float]:
            started = time.monotonic()
            while True:
                free, _, pages, _ = mem()
                if pages == target_pages:
                    return free, time.monotonic() - started
                if time.monotonic() - started > 60:
                    raise AssertionError(f"the balloon holds {pages} pages after 60 s, target {target_pages}")
                time.sleep(0.05)

        free0, total, pages, _ = mem()
        if pages != 0:
            problems.append(f"the balloon starts with {pages} pages")
        half = MEMORY_MIB * MiB // 2
        qmp.execute("balloon", value=half)
        target_pages = (MEMORY_MIB * MiB - half) // PAGE
        free1, seconds = follow(target_pages)
        report(f"inflated {target_pages} pages ({half // MiB} MiB) in {seconds:.2f} s")
        if free0 - free1 != target_pages * PAGE:
            problems.append(f"free memory went from {free0} to {free1}: down {free0 - free1}, "
                            f"the balloon holds {target_pages * PAGE}")
        actual = qmp.execute("query-balloon")["actual"]
        if actual != half:
            problems.append(f"query-balloon says {actual}, expected {half}")

        qmp.execute("qom-set", path="/machine/peripheral/balloon0",
                    property="guest-stats-polling-interval", value=1)
        stats: dict = {}
        for _ in range(60):
            time.sleep(0.1)
            shell.run("mem")  # the shell's idle loop answers the request
            stats = qmp.execute("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")["stats"]
            if stats.get("stat-total-memory", -1) != -1:
                break
        free_now, _, _, _ = mem()
        if stats.get("stat-total-memory") != total:
            problems.append(f"guest-stats total {stats.get('stat-total-memory')}, the kernel says {total}")
        reported_free = stats.get("stat-free-memory", -1)
        if abs(reported_free - free_now) > 64 * PAGE:
            problems.append(f"guest-stats free {reported_free}, the kernel says {free_now}")

        qmp.execute("balloon", value=MEMORY_MIB * MiB)
        free2, seconds = follow(0)
        report(f"deflated in {seconds:.2f} s")
        if free2 != free0:
            problems.append(f"free memory is {free2} after deflating, {free0} before inflating")
        qmp.close()
        shell.send(b"poweroff\r")
        shell.read_until(b"powering off")
        return problems

    return interact


def balloon_scenario(name: str, machine: str, transport: str, props: str = "",
                     extra_args: tuple[str, ...] = ()) -> Scenario:
    notes: list[str] = []

    def devices(ctx: RunContext) -> list[str]:
        args = list(extra_args)
        args += ["-device", f"{qm.virtio_device('virtio-balloon', machine)},id=balloon0{props}"]
        args += ["-qmp", f"unix:{ctx.file('qmp.sock')},server=on,wait=off"]
        args += ["-chardev", f"socket,id=con,path={ctx.file('console.sock')},server=on,wait=off"]
        args += ["-device", f"{qm.virtio_device('virtio-serial', machine)},id=vser0"]
        args += ["-device", "virtconsole,chardev=con,bus=vser0.0"]
        return args

    def report(line: str) -> None:
        print(f"{name}: {line}", flush=True)

    return Scenario(
        name=name,
        machine=machine,
        firmware=None if machine == "microvm" else "qboot",
        accel="tcg",
        devices=devices,
        memory=f"{MEMORY_MIB}M",
        append="log=info",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[r"^kernel: booting \(PVH\)", rf"^virtio: balloon at .+? transport={transport} ring={'packed' if 'packed=on' in props else 'split'} queues=3 ",
                         r"^balloon: at ", r"^kernel: ready$", r"^shell: poweroff$"],
        forbid=[*DEFAULT_FORBID, r"^virtio: .* FAILED: ", r"ERROR kernel::balloon"],
        timeout_s=180.0,
        interact=session(report),
    )


BALLOON_SCENARIOS: list[Scenario] = [
    balloon_scenario("balloon-q35-pci-modern", "q35", "pci-modern", ",disable-legacy=on"),
    balloon_scenario("balloon-pc-pci-legacy", "pc", "pci-legacy", ",disable-modern=on"),
    balloon_scenario("balloon-microvm-mmio-v2-packed", "microvm", "mmio-v2", ",packed=on",
                     extra_args=("-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false")),
]
