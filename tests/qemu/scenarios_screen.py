"""QEMU scenarios for the screen and the keyboard (virtio-gpu, virtio-input).

Each boot has a virtio-gpu and a virtio keyboard and nothing else: no
virtio console, so the shell is reachable only through them. The
interaction types through QMP `send-key` and reads the answers back from
QMP `screendump` (`screen_text.py`: every 8x16 cell compared with the
kernel's own font, pixel for pixel):

1. `uptimx`, Left (ignored by the line editor), Backspace, `e`, Enter: the
   line reads `kernel> uptime` and the next `up <s>.<us> s`;
2. `Log warn` with Shift: the exact pixels of
   ``error: unknown command `Log`; try `help` `` on some text row;
3. `junk` then Ctrl-C: `kernel> junk^C`;
4. a screenshot for the book (`build/screenshots/<scenario>.png`), then
   `poweroff` (QEMU status 41).

`screen-and-console-q35` adds a virtio console: a command typed on the
console is answered there and not on the screen, one typed on the keyboard
on the screen and not on the console.

QEMU's status trace must show each device brought up exactly once.

On PCI (`virtio-gpu-pci`, `virtio-keyboard-pci`, modern-only devices) and
on virtio-mmio (`virtio-gpu-device`, `virtio-keyboard-device` on microvm,
legacy MMIO v1 by default). Both run under TCG: each takes a few seconds.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import machine as qm
from . import screen_text
from .harness import Outcome, RunContext, Scenario
from .qmp import Qmp, qmp_args

#: The display size the scenarios ask for (QEMU's default is 1280x800).
XRES, YRES = 640, 400
#: How long a typed command may take to show its answer.
ANSWER_TIMEOUT_S = 30.0


#: QEMU's trace of status writes, in the work directory.
STATUS_TRACE = "status-trace.log"


def screen_devices(machine: str) -> Callable[[RunContext], list[str]]:
    """A GPU and a keyboard on the machine's transport, a QMP socket, and
    QEMU's trace of every status write."""
    if machine == "microvm":
        devices = ["-M", "acpi=off", "-device", f"virtio-gpu-device,xres={XRES},yres={YRES}",
                   "-device", "virtio-keyboard-device"]
    else:
        devices = ["-device", f"virtio-gpu-pci,xres={XRES},yres={YRES}", "-device", "virtio-keyboard-pci"]
    return lambda ctx: (devices + qmp_args(ctx.file("qmp.sock"))
                        + ["-msg", "timestamp=on", "-trace", "virtio_set_status", "-D", str(ctx.file(STATUS_TRACE))])


def brought_up_once(legacy: bool) -> Callable[[Outcome], list[str]]:
    """Each of the two devices went through §3.1.1 (§3.1.2 on legacy) once."""

    def check(outcome: Outcome) -> list[str]:
        from .scenarios import ONE_BRING_UP, ONE_LEGACY_BRING_UP, status_write_problems

        assert outcome.ctx is not None
        path = outcome.ctx.file(STATUS_TRACE)
        trace = path.read_text("utf-8", "replace") if path.exists() else ""
        return status_write_problems(trace, 2, ONE_LEGACY_BRING_UP if legacy else ONE_BRING_UP)

    return check


def wait_for_screen(qmp: Qmp, ctx: RunContext, ready: Callable[[list[str]], bool], what: str,
                    timeout_s: float = ANSWER_TIMEOUT_S) -> list[str]:
    """Screendumps until `ready(lines)`; the lines, or AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = screen_text.screen_lines(screen_text.read_ppm(qmp.screendump(ctx.file("screen.ppm"))))
        if ready(lines):
            return lines
        if time.monotonic() > deadline:
            shown = "\n".join(f"    |{line}" for line in lines if line)
            raise AssertionError(f"{what} never appeared on the screen; it shows:\n{shown}")
        time.sleep(0.3)


def followed_by(lines: list[str], line: str, pattern: str) -> bool:
    """`line` appears, and the next line matches `pattern`."""
    return any(a == line and re.fullmatch(pattern, b) for a, b in zip(lines, lines[1:]))


def screen_session(ctx: RunContext) -> list[str]:
    """The interaction described in the module docs."""
    problems: list[str] = []
    qmp = Qmp(ctx.file("qmp.sock"))
    try:
        wait_for_screen(qmp, ctx, lambda lines: "teaching kernel shell on the screen. Type `help`." in lines,
                        "the shell's greeting")
        qmp.send_keys("uptimx")
        qmp.press("left")
        qmp.press("backspace")
        qmp.send_keys("e\n")
        wait_for_screen(qmp, ctx, lambda lines: followed_by(lines, "kernel> uptime", r"up \d+\.\d{6} s"),
                        "`kernel> uptime` and its answer")

        qmp.send_keys("Log warn\n")
        answer = "error: unknown command `Log`; try `help`"
        wait_for_screen(qmp, ctx, lambda lines: answer in lines, repr(answer))
        # The same line, as pixels rendered from the kernel's font and colours.
        image = screen_text.read_ppm(ctx.file("screen.ppm"))
        if screen_text.find_rendered(image, answer) is None:
            problems.append(f"no text row has exactly the pixels of {answer!r}")

        qmp.send_keys("junk")
        qmp.press("ctrl", "c")
        wait_for_screen(qmp, ctx, lambda lines: "kernel> junk^C" in lines, "`kernel> junk^C`")

        save_screenshot(ctx)
        qmp.send_keys("poweroff\n")
    finally:
        qmp.close()
    return problems


def save_screenshot(ctx: RunContext) -> None:
    """The last screendump as PNG, in the work directory and in build/screenshots/."""
    png = ctx.file("screen.png")
    screen_text.ppm_to_png(ctx.file("screen.ppm"), png)
    shots = Path(ctx.workdir).parent.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, shots / f"{ctx.name}.png")


def screen_scenario(name: str, machine: str, transport: str) -> Scenario:
    firmware = None if machine == "microvm" else "qboot"
    return Scenario(
        name=name,
        machine=machine,
        firmware=firmware,
        accel="tcg",
        devices=screen_devices(machine),
        append="",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[
            r"^kernel: booting \(PVH\)",
            rf"^virtio: gpu at .+ transport={transport} ring=split queues=2 ",
            rf"^screen: {XRES}x{YRES} pixels, {XRES // 8}x{YRES // 16} text at ",
            rf"^virtio: input at .+ transport={transport} ring=split queues=2 ",
            r'^input: "QEMU Virtio Keyboard" at .+, a keyboard$',
            r"^kernel: ready$",
            r"^shell: ready on the screen \(virtio-gpu\) with the keyboard \(virtio-input\)$",
            r"^shell: poweroff$",
        ],
        forbid=[r"^PANIC at ", r"^EXCEPTION ", r"^shell: ready on virtio console"],
        timeout_s=90.0,
        interact=screen_session,
        check=brought_up_once(legacy=transport in ("mmio-v1", "pci-legacy")),
        interact_after=r"^shell: ready on the screen",
    )


def both_terminals_devices(ctx: RunContext) -> list[str]:
    """The screen and keyboard of `screen_devices`, plus a virtio console on `console.sock`."""
    from .scenarios import console_devices

    return screen_devices("q35")(ctx) + console_devices("q35", named_port=False)(ctx)


def both_terminals_session(ctx: RunContext) -> list[str]:
    """One shell on two terminals: each command's output goes back to the
    terminal it was typed on, and only there."""
    from .console_session import Shell

    problems: list[str] = []
    shell = Shell(ctx.file("console.sock"))
    qmp = Qmp(ctx.file("qmp.sock"))
    try:
        try:
            # Both greetings went out before `shell: ready on the screen`.
            shell.wait_prompt(timeout_s=2)
        except AssertionError:
            # The shell holds output while QEMU says the port is closed, but once
            # QEMU has named it a console port the driver sends regardless (as
            # Linux does), and QEMU drops bytes for a socket not yet connected.
            shell.type(b"\r", timeout_s=10)
        wait_for_screen(qmp, ctx, lambda lines: "teaching kernel shell on the screen. Type `help`." in lines,
                        "the shell's greeting on the screen")
        # Typed on the console: answered on the console, not on the screen.
        answer = shell.run("log warn")
        if "log level is now WARN" not in answer:
            problems.append(f"the console got {answer!r} for `log warn`")
        # Typed on the keyboard: answered on the screen ...
        qmp.send_keys("log error\n")
        lines = wait_for_screen(qmp, ctx, lambda lines: "log level is now ERROR" in lines,
                                "the answer to `log error`")
        # Look for the answer itself, not any "WARN": the kernel's log is on the screen too, and
        # a greeting sent before the host opened the console port logs a WARN line there.
        if any("log level is now WARN" in line for line in lines):
            problems.append("the console's command was answered on the screen too")
        # ... and nothing of it reaches the console.
        try:
            leaked = shell.read_until(b"ERROR", timeout_s=1.0)
            problems.append(f"the keyboard's command was answered on the console too: {leaked!r}")
        except AssertionError:
            pass
        shell.send(b"poweroff\r")
    finally:
        qmp.close()
        shell.close()
    return problems


SCREEN_SCENARIOS: list[Scenario] = [
    screen_scenario("screen-keyboard-q35-pci", "q35", "pci-modern"),
    screen_scenario("screen-keyboard-microvm-mmio", "microvm", "mmio-v1"),
    # The virtio console and the screen at once.
    Scenario(
        name="screen-and-console-q35",
        machine="q35",
        firmware="qboot",
        accel="tcg",
        devices=both_terminals_devices,
        append="",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[
            r"^kernel: ready$",
            r"^shell: ready on virtio console port 0 ",
            r"^shell: ready on the screen \(virtio-gpu\) with the keyboard \(virtio-input\)$",
            r"^shell: poweroff$",
        ],
        timeout_s=90.0,
        interact=both_terminals_session,
        interact_after=r"^shell: ready on the screen",
    ),
]
