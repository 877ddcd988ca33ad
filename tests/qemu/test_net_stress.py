"""Unit tests of the host side of the `net-stress-*` scenarios
(tests/qemu/net_stress.py): the counters line is read exactly as the kernel
writes it (`ServiceCounters`' Display in kernel/src/net/services.rs), and
the clients tell a correct echo from a corrupted or cut one, a clean close
from a reset, against small local servers."""

from __future__ import annotations

import socket
import struct
import threading
import unittest

from . import net_stress

PAGE = (
    '<li class="service">echo port 7: in use 0/32 (peak 5), refusing 0/8, accepted 10, refused 1, closed 9, '
    "timed out 1, reset 0, rejected 0, held 0 B, queued 0 B, socket buffers 1032 KiB</li>\n"
    '<li class="service">http port 80: in use 1/8 (peak 3), refusing 0/8, accepted 4, refused 0, closed 3, '
    "timed out 0, reset 0, rejected 2, held 37 B, queued 0 B, socket buffers 152 KiB</li>\n"
)


def serve_once(handler) -> int:
    """A one-connection TCP server on 127.0.0.1 running `handler(conn)`; returns its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        try:
            handler(conn)
        finally:
            listener.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def echo_handler(corrupt_at: int | None = None, stop_after: int | None = None):
    def handle(conn: socket.socket) -> None:
        seen = 0
        with conn:
            while True:
                data = bytearray(conn.recv(65536))
                if not data:
                    return
                if corrupt_at is not None and seen <= corrupt_at < seen + len(data):
                    data[corrupt_at - seen] ^= 0xFF
                if stop_after is not None and seen + len(data) > stop_after:
                    conn.sendall(data[: stop_after - seen])
                    return
                seen += len(data)
                conn.sendall(data)

    return handle


class CountersTest(unittest.TestCase):
    def test_the_kernel_line_is_read_field_by_field(self) -> None:
        found = net_stress.parse_counters(PAGE)
        self.assertEqual(found["echo"]["capacity"], 32)
        self.assertEqual(found["echo"]["peak"], 5)
        self.assertEqual(found["http"].levels(), {"in_use": 1, "refusing": 0, "held": 37, "queued": 0})
        self.assertEqual(found["http"]["rejected"], 2)

    def test_the_shell_prints_the_same_text(self) -> None:
        shell = "\r\n".join("net0: " + line.removeprefix('<li class="service">').removesuffix("</li>")
                             for line in PAGE.splitlines())
        self.assertEqual(net_stress.parse_counters(shell, net_stress.COUNTERS_SHELL_LINE),
                         net_stress.parse_counters(PAGE))

    def test_a_missing_service_is_an_error(self) -> None:
        with self.assertRaises(AssertionError):
            net_stress.parse_counters(PAGE.splitlines()[0])
        with self.assertRaises(AssertionError):
            net_stress.parse_counters(PAGE.replace("(peak 3)", ""))


class ClientTest(unittest.TestCase):
    def test_a_faithful_echo_passes(self) -> None:
        port = serve_once(echo_handler())
        self.assertEqual(net_stress.echo_stream(port, bytes(range(256)) * 300), "")

    def test_a_flipped_byte_is_found(self) -> None:
        port = serve_once(echo_handler(corrupt_at=40000))
        self.assertIn("first difference at byte 40000", net_stress.echo_stream(port, bytes(range(256)) * 300))

    def test_a_cut_echo_is_found(self) -> None:
        port = serve_once(echo_handler(stop_after=1000))
        # Depending on timing, the short echo is seen, or the reset that
        # follows the server's close (which may discard what was unread).
        self.assertRegex(net_stress.echo_stream(port, bytes(range(256)) * 300),
                         r"^(1000 of 76800 bytes back|(sending|reading): .*(Reset|Broken))")

    def test_a_reset_is_told_from_a_close(self) -> None:
        def reset(conn: socket.socket) -> None:
            conn.recv(100)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

        port = serve_once(reset)
        status, _, ending = net_stress.http_exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual((status, ending), (None, "reset"))

        def answer(conn: socket.socket) -> None:
            conn.recv(100)
            conn.sendall(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")
            conn.close()

        port = serve_once(answer)
        status, _, ending = net_stress.http_exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual((status, ending), (431, "eof"))


if __name__ == "__main__":
    unittest.main()
