"""`net-stress-*`: the kernel's network services under load and abuse
(issue 18, "network services that hold up"; kernel/src/net/services.rs).

A normal boot with QEMU's user network and `hostfwd=` rules to the echo
(port 7) and HTTP (port 80) servers. Once the DHCP lease is logged,
`net_stress.stress_session` runs from the host, every step bounded in time:
dozens of concurrent echo streams with every byte checked, stalled clients,
malformed and oversized requests, resets mid-transfer, every slot held (503
and refusal, then service again as slots free); then it checks that echo
and HTTP answer correctly and that the kernel's socket and buffer counters
(the status page's service lines) are back to their start values.

`net.idle_ms=4000` shortens the idle timeout (default 60 s) so that the
silent echo client is timed out within the run; the HTTP request timeout
is the production default (5 s). Each scenario takes about 30 s under TCG.
"""

from __future__ import annotations


import time

from . import machine as qm
from .harness import DEFAULT_FORBID, KILLED, RunContext, Scenario
from .scenarios import BOOT_BANNER, NET_DHCP_LINE, net_nic_args

#: The idle timeout the scenarios give the kernel (`net.idle_ms=`), in seconds.
IDLE_TIMEOUT_S = 4.0


def stress_interaction(ctx: RunContext) -> list[str]:
    from . import net_stress

    return net_stress.stress_session(ctx.port("echo"), ctx.port("http"), idle_timeout_s=IDLE_TIMEOUT_S)


def shell_stress_interaction(ctx: RunContext) -> list[str]:
    """The same load with the shell owning the CPU (as under `./x.py run`),
    plus the shell's `sockets` before and after: every level back to 0."""
    from . import net_stress
    from .console_session import Shell

    shell = Shell(ctx.file("console.sock"))
    try:
        # The prompt came before the DHCP lease this runs after, so it was
        # either printed into the socket already or went out before anyone
        # listened: a short wait, then an empty line for a fresh prompt.
        shell.wait_prompt(timeout_s=3)
    except AssertionError:
        shell.type(b"\r", timeout_s=10)
    pattern = net_stress.COUNTERS_SHELL_LINE
    problems: list[str] = []
    before = net_stress.parse_counters(shell.run("sockets"), pattern)
    for service in ("echo", "http"):
        if any(before[service].levels().values()):
            problems.append(f"sockets before the load: {service} {before[service].levels()}")
    problems += net_stress.stress_session(ctx.port("echo"), ctx.port("http"), idle_timeout_s=IDLE_TIMEOUT_S)
    deadline = time.monotonic() + 10.0
    while True:
        after = net_stress.parse_counters(shell.run("sockets"), pattern)
        busy = {s: after[s].levels() for s in ("echo", "http") if any(after[s].levels().values())}
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    if busy:
        problems.append(f"sockets after the load: levels not back to 0: {busy}")
    return problems


def net_stress(name: str, machine: str, firmware: str | None, props: str = "",
               extra_args: tuple[str, ...] = (), append: str = "", shell: bool = False) -> Scenario:
    def devices(ctx: RunContext) -> list[str]:
        netdev = (f"user,id=n0,hostfwd=tcp:127.0.0.1:{ctx.port('echo')}-:7,"
                  f"hostfwd=tcp:127.0.0.1:{ctx.port('http')}-:80")
        args = [*extra_args, "-netdev", netdev, *net_nic_args(machine, "n0", qm.STANDARD_MAC, props)]
        if shell:
            args += ["-chardev", f"socket,id=con,path={ctx.file('console.sock')},server=on,wait=off",
                     "-device", f"{qm.virtio_device('virtio-serial', machine)},id=vser0",
                     "-device", "virtconsole,chardev=con,bus=vser0.0"]
        return args

    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel="tcg",
        devices=devices,
        append=f"log=info net.idle_ms={int(IDLE_TIMEOUT_S * 1000)} {append}".strip(),
        expect_status=KILLED,
        expect_in_order=[BOOT_BANNER, r"^kernel: ready$", NET_DHCP_LINE],
        # A misbehaving client is not a kernel warning.
        forbid=[*DEFAULT_FORBID, r"WARN kernel::net", r"WARN drivers::net", r"ERROR "],
        timeout_s=150.0,
        interact=shell_stress_interaction if shell else stress_interaction,
        interact_after=NET_DHCP_LINE,
        stop_after_interact=True,
    )


NET_STRESS_SCENARIOS: list[Scenario] = [
    # Modern PCI with MSI-X: the idle loop sleeps between interrupts.
    net_stress("net-stress-q35-modern", "q35", "qboot"),
    # With a virtio console the shell owns the CPU and runs the network
    # between commands (the way `./x.py run` boots, where issue 18 was
    # found); its `sockets` command reads the counters.
    net_stress("net-stress-pc-shell", "pc", "qboot", shell=True),
]
