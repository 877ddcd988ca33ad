"""Talking to the kernel's shell and its serial ports from a scenario.

QEMU exposes each virtio-console port through a `-chardev socket,...,
server=on,wait=off` in the scenario's work directory; these helpers connect
to such a socket and behave like a user at a terminal: type a line (or raw
key bytes), wait for the prompt, and return what the shell printed in
between, without the echo of what was typed.

`pattern(n, seed)` and `fnv1a64(data)` are the host side of the shell's
`send` / `recv` commands (kernel/src/shell/mod.rs): byte `i` of the pattern
is `(i * 131 + seed + (i >> 8)) mod 256`.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

PROMPT = b"kernel> "


def pattern(n: int, seed: int) -> bytes:
    """The bytes `send <port> n seed` writes."""
    return bytes(((i * 131) + seed + (i >> 8)) & 0xFF for i in range(n))


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits (what `recv` prints)."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def connect(path: Path, timeout_s: float = 10.0) -> socket.socket:
    """Connects to a QEMU socket chardev, retrying until QEMU has created it."""
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Port:
    """The host end of a serial port: raw bytes in and out."""

    def __init__(self, path: Path) -> None:
        self.sock = connect(path)
        self.buffer = bytearray()

    def send(self, data: bytes, timeout_s: float = 120.0) -> None:
        # A read may have left a short timeout on the socket; a large send
        # blocks for as long as the guest pushes back, so give it its own.
        self.sock.settimeout(timeout_s)
        self.sock.sendall(data)

    def read_exactly(self, n: int, timeout_s: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while len(self.buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {len(self.buffer)} of {n} bytes arrived")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError(f"connection closed after {len(self.buffer)} of {n} bytes")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def read_until(self, marker: bytes, timeout_s: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while marker not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{marker!r} did not arrive; got {bytes(self.buffer[-300:])!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError(f"connection closed before {marker!r}")
            self.buffer += chunk
        end = self.buffer.index(marker) + len(marker)
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    def close(self) -> None:
        self.sock.close()


class Shell(Port):
    """The shell on the console port."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.transcript = bytearray()

    def wait_prompt(self, timeout_s: float = 15.0) -> bytes:
        out = self.read_until(PROMPT, timeout_s)
        self.transcript += out
        return out

    def type(self, keys: bytes, timeout_s: float = 15.0) -> str:
        """Sends raw keys that end a line; returns what came back up to the
        next prompt (echo included), as text with CR removed."""
        self.transcript += keys
        self.send(keys)
        return self.wait_prompt(timeout_s).decode("utf-8", "replace").replace("\r", "")

    def run(self, command: str, timeout_s: float = 15.0) -> str:
        """Types `command` and Enter; returns its output without the echo and the prompt."""
        text = self.type(command.encode() + b"\r", timeout_s)
        echo = command + "\n"
        if not text.startswith(echo):
            raise AssertionError(f"{command!r}: echo missing, got {text[:200]!r}")
        return text[len(echo):-len(PROMPT)]


def in_background(target, *args) -> tuple[threading.Thread, list]:
    """Runs `target(*args)` in a thread; the list receives its result or exception."""
    result: list = []

    def body() -> None:
        try:
            result.append(target(*args))
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            result.append(err)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, result
