"""A small QMP client (QEMU Machine Protocol), standard library only.

A scenario starts QEMU with `-qmp unix:PATH,server=on,wait=off` (`qmp_args`)
and talks to it with `Qmp`: the greeting, `qmp_capabilities`, then commands
as JSON lines. Asynchronous events are skipped. What the screen scenarios use:

- `send_keys(text)`: types text as key presses (`send-key` with QKeyCodes,
  a shifted character as `shift` + key), `press(*keys)` one chord;
- `screendump(path)`: the display as a PPM file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .console_session import connect

#: Characters typed without Shift, by QKeyCode.
PLAIN = {
    **{c: c for c in "abcdefghijklmnopqrstuvwxyz0123456789"},
    " ": "spc", "-": "minus", "=": "equal", "[": "bracket_left", "]": "bracket_right",
    ";": "semicolon", "'": "apostrophe", "`": "grave_accent", "\\": "backslash",
    ",": "comma", ".": "dot", "/": "slash", "\n": "ret", "\t": "tab",
}
#: Characters typed with Shift: the key that carries them.
SHIFTED = {
    **{c.upper(): c for c in "abcdefghijklmnopqrstuvwxyz"},
    "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8",
    "(": "9", ")": "0", "_": "minus", "+": "equal", "{": "bracket_left", "}": "bracket_right",
    ":": "semicolon", '"': "apostrophe", "~": "grave_accent", "|": "backslash",
    "<": "comma", ">": "dot", "?": "slash",
}


def qmp_args(path: Path) -> list[str]:
    """The QEMU arguments for a QMP server on a Unix socket at `path`."""
    return ["-qmp", f"unix:{path},server=on,wait=off"]


class QmpError(AssertionError):
    """QEMU answered a command with an error."""


class Qmp:
    """One QMP connection (see the module docs)."""

    def __init__(self, path: Path, timeout_s: float = 20.0) -> None:
        self.sock = connect(path, timeout_s)
        self.sock.settimeout(timeout_s)
        self.file = self.sock.makefile("rw", encoding="utf-8")
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise QmpError("QMP connection closed")
        return json.loads(line)

    def execute(self, command: str, **arguments: object) -> object:
        """Runs one command; returns its `return` value or raises QmpError."""
        request: dict = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.file.write(json.dumps(request) + "\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            # An asynchronous event ({"event": ...}): not ours.

    def press(self, *keys: str) -> None:
        """One chord: the keys go down in order and come up together."""
        self.execute("send-key", keys=[{"type": "qcode", "data": k} for k in keys])

    def send_keys(self, text: str, pause_s: float = 0.02) -> None:
        """Types `text` (ASCII the US layout has; `\\n` is Enter)."""
        for ch in text:
            if ch in PLAIN:
                self.press(PLAIN[ch])
            elif ch in SHIFTED:
                self.press("shift", SHIFTED[ch])
            else:
                raise ValueError(f"no key types {ch!r}")
            time.sleep(pause_s)

    def screendump(self, path: Path) -> Path:
        """Writes the display to `path` (PPM) and returns it."""
        path = Path(path)
        path.unlink(missing_ok=True)
        self.execute("screendump", filename=str(path))
        return path

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass



def main(argv: list[str]) -> int:
    """`python3 -m tests.qemu.qmp SOCKET screendump OUT.(png|ppm)`, or
    `... SOCKET send-keys TEXT`: for a running `x.py run --display`."""
    import sys

    from . import screen_text

    if len(argv) != 3 or argv[1] not in ("screendump", "send-keys"):
        print("usage: python3 -m tests.qemu.qmp SOCKET screendump OUT.png|OUT.ppm\n"
              "       python3 -m tests.qemu.qmp SOCKET send-keys TEXT", file=sys.stderr)
        return 2
    socket_path, verb, arg = Path(argv[0]), argv[1], argv[2]
    try:
        qmp = Qmp(socket_path, timeout_s=5.0)
    except OSError as err:
        print(f"cannot reach QMP at {socket_path}: {err} (is `./x.py run --display` running?)", file=sys.stderr)
        return 1
    try:
        if verb == "send-keys":
            qmp.send_keys(arg.replace("\\n", "\n"))
            return 0
        out = Path(arg)
        if out.suffix == ".png":
            ppm = out.with_suffix(".ppm")
            qmp.screendump(ppm.resolve())
            time.sleep(0.2)
            screen_text.ppm_to_png(ppm, out)
            ppm.unlink()
        else:
            qmp.screendump(out.resolve())
        print(out)
        return 0
    except (QmpError, ValueError, OSError) as err:
        print(f"qmp: {err}", file=sys.stderr)
        return 1
    finally:
        qmp.close()


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
