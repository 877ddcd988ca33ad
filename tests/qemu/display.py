"""`x.py run --display`: the kernel's screen and keyboard in a window, or
the way to see them when there is no window.

The boot gets a virtio-gpu and a virtio keyboard on the machine's transport
(`virtio-gpu-pci` / `virtio-keyboard-pci`, or the `-device` variants on
microvm) and a QMP socket (`build/run-qmp.sock`). Then:

- with a graphical session (`DISPLAY` or `WAYLAND_DISPLAY` set) and a QEMU
  that has a window backend (`-display help` lists gtk or sdl; Debian's
  `qemu-system-gui` package), QEMU opens a window: the screen, and what
  is typed into it goes to the virtio keyboard;
- without one, the screen is served over VNC on 127.0.0.1 (a free display
  number from :0), and a screendump can be taken at any time with
  `python3 -m tests.qemu.qmp build/run-qmp.sock screendump build/screen.png`.

`plan(...)` returns the QEMU arguments and the lines `x.py` says about them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import machine as qm
from .qmp import qmp_args

#: First TCP port of VNC display :0.
VNC_BASE_PORT = 5900


@dataclass
class DisplayPlan:
    args: list[str]
    messages: list[str] = field(default_factory=list)


def screen_devices(machine: str) -> list[str]:
    """A GPU and a keyboard, on virtio-mmio for microvm, on PCI otherwise."""
    if machine == "microvm":
        return ["-device", "virtio-gpu-device", "-device", "virtio-keyboard-device"]
    return ["-device", "virtio-gpu-pci", "-device", "virtio-keyboard-pci"]


def window_backends(qemu: str = qm.QEMU) -> list[str]:
    """The window backends this QEMU has (gtk, sdl), from `-display help`."""
    try:
        out = subprocess.run([qemu, "-display", "help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    names = {line.strip() for line in out.splitlines()}
    return [name for name in ("gtk", "sdl") if name in names]


def free_vnc_display(limit: int = 100) -> int | None:
    for display in range(limit):
        if qm.port_is_free(VNC_BASE_PORT + display):
            return display
    return None


def plan(machine: str, qmp_socket: Path, env: Mapping[str, str] = os.environ,
         backends: list[str] | None = None) -> DisplayPlan:
    """The arguments and the messages for `--display` (see the module docs)."""
    args = screen_devices(machine) + qmp_args(qmp_socket)
    screendump = f"python3 -m tests.qemu.qmp {qmp_socket} screendump build/screen.png"
    graphical = env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")
    if graphical:
        available = window_backends() if backends is None else backends
        if available:
            return DisplayPlan(args + ["-display", available[0]], [
                f"screen: a {available[0]} window (virtio-gpu); click it and type: the keys go to "
                "the virtio keyboard, and the shell answers on the screen",
                f"screendump at any time: {screendump}",
            ])
        message = ("screen: DISPLAY is set but this QEMU has no window backend (gtk/sdl): "
                   "`apt-get install qemu-system-gui` adds them; serving the screen over VNC instead")
    else:
        message = "screen: no window here (DISPLAY and WAYLAND_DISPLAY are unset)"
    display = free_vnc_display()
    if display is None:
        return DisplayPlan(args, [message, f"no free VNC port from {VNC_BASE_PORT}: see the screen "
                                           f"with a screendump: {screendump}"])
    return DisplayPlan(args + ["-vnc", f"127.0.0.1:{display}"], [
        message,
        f"screen: VNC on 127.0.0.1:{VNC_BASE_PORT + display} (e.g. `vncviewer 127.0.0.1:{display}`; "
        "from another machine, `ssh -L` that port first)",
        f"screen: or take a screendump: {screendump}",
    ])
