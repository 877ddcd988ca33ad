"""Unit tests of the host side of the virtio-net scenarios (tests/qemu/net.py)
and of the harness's `stop_after_interact`.

The pcap reader and the DHCP check are fed captures built here, byte by
byte, from the RFC 2131 layout, so a check that accepts a wrong MAC, a
missing ACK or a wrong address fails here. The echo and HTTP clients run
against small local servers.
"""

from __future__ import annotations

import socket
import struct
import sys
import tempfile
import textwrap
import threading
import unittest
from pathlib import Path

from . import harness, net, scenarios
from .harness import KILLED, Scenario

GUEST = "52:54:00:12:34:56"
SLIRP = "52:55:0a:00:02:02"


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def dhcp_frame(kind: int, src: str, dst: str, op: int, xid: int, chaddr: str, yiaddr: str) -> bytes:
    """An Ethernet/IPv4/UDP/DHCP frame (checksums zero: the reader ignores them)."""
    bootp = bytearray(240)
    bootp[0] = op
    bootp[1], bootp[2] = 1, 6
    struct.pack_into(">I", bootp, 4, xid)
    bootp[16:20] = bytes(int(x) for x in yiaddr.split("."))
    bootp[28:34] = mac_bytes(chaddr)
    bootp[236:240] = net.DHCP_COOKIE
    bootp += bytes([53, 1, kind, 255])
    ports = (68, 67) if op == 1 else (67, 68)
    udp = struct.pack(">HHHH", ports[0], ports[1], 8 + len(bootp), 0) + bytes(bootp)
    ip = bytearray(20)
    ip[0] = 0x45
    struct.pack_into(">H", ip, 2, 20 + len(udp))
    ip[8], ip[9] = 64, 17
    return mac_bytes(dst) + mac_bytes(src) + b"\x08\x00" + bytes(ip) + udp


def exchange(mac: str = GUEST, offered: str = "10.0.2.15", skip: tuple[int, ...] = ()) -> list[bytes]:
    frames = [
        dhcp_frame(1, mac, "ff:ff:ff:ff:ff:ff", 1, 0x1234, mac, "0.0.0.0"),
        dhcp_frame(2, SLIRP, "ff:ff:ff:ff:ff:ff", 2, 0x1234, mac, offered),
        dhcp_frame(3, mac, "ff:ff:ff:ff:ff:ff", 1, 0x1235, mac, "0.0.0.0"),
        dhcp_frame(5, SLIRP, "ff:ff:ff:ff:ff:ff", 2, 0x1235, mac, offered),
    ]
    return [f for i, f in enumerate(frames) if i not in skip]


def pcap_bytes(frames: list[bytes], big_endian: bool = False) -> bytes:
    order = ">" if big_endian else "<"
    out = struct.pack(order + "IHHiIII", net.PCAP_MAGIC_LE, 2, 4, 0, 0, 65535, 1)
    for i, frame in enumerate(frames):
        out += struct.pack(order + "IIII", i, 0, len(frame), len(frame)) + frame
    return out


class PcapTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "x.pcap"

    def tearDown(self):
        self.dir.cleanup()

    def test_frames_come_back_in_order_either_byte_order(self):
        frames = [b"\x01" * 60, b"\x02" * 1514, b"\x03" * 64]
        for big in (False, True):
            self.path.write_bytes(pcap_bytes(frames, big))
            self.assertEqual(net.read_pcap(self.path), frames)

    def test_not_a_pcap_and_truncated_files_are_rejected(self):
        self.path.write_bytes(b"\x00" * 40)
        with self.assertRaises(ValueError):
            net.read_pcap(self.path)
        self.path.write_bytes(pcap_bytes([b"\x01" * 60])[:-10])
        with self.assertRaises(ValueError):
            net.read_pcap(self.path)

    def test_dhcp_messages_are_decoded(self):
        messages = net.dhcp_messages(exchange() + [b"\xff" * 60])
        self.assertEqual([m.kind for m in messages], ["DISCOVER", "OFFER", "REQUEST", "ACK"])
        self.assertEqual(messages[1].yiaddr, "10.0.2.15")
        self.assertEqual({m.chaddr for m in messages}, {GUEST})
        self.assertEqual(messages[0].eth_src, GUEST)

    def test_a_complete_exchange_passes(self):
        self.assertEqual(net.check_dhcp_exchange(net.dhcp_messages(exchange()), GUEST, "10.0.2.15"), [])

    def test_wrong_mac_missing_ack_and_wrong_address_fail(self):
        other = net.dhcp_messages(exchange(mac="52:54:00:00:00:99"))
        self.assertTrue(net.check_dhcp_exchange(other, GUEST, "10.0.2.15"))
        no_ack = net.dhcp_messages(exchange(skip=(3,)))
        self.assertIn("no DHCP ACK", " ".join(net.check_dhcp_exchange(no_ack, GUEST, "10.0.2.15")))
        wrong = net.dhcp_messages(exchange(offered="10.0.2.16"))
        self.assertTrue(any("offers 10.0.2.16" in p for p in net.check_dhcp_exchange(wrong, GUEST, "10.0.2.15")))


def serve(handler) -> tuple[int, threading.Thread, socket.socket]:
    """A one-connection TCP server on 127.0.0.1 running `handler(conn)`."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def run():
        conn, _ = server.accept()
        with conn:
            handler(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server.getsockname()[1], thread, server


class ClientTest(unittest.TestCase):
    def test_echo_round_trip_returns_what_the_server_sent(self):
        def echo(conn):
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

        port, thread, server = serve(echo)
        data = bytes(range(256)) * 4096
        back, _ = net.echo_round_trip(port, data)
        thread.join(5)
        server.close()
        self.assertEqual(back, data)

    def test_a_lossy_echo_is_seen(self):
        def lossy(conn):
            received = 0
            while chunk := conn.recv(65536):
                received += len(chunk)
            conn.sendall(b"x" * (received - 1))

        port, thread, server = serve(lossy)
        back, _ = net.echo_round_trip(port, b"y" * 10000)
        thread.join(5)
        server.close()
        self.assertEqual(len(back), 9999)

    def test_http_get_parses_status_headers_and_body(self):
        def http(conn):
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            assert request.startswith(b"GET /x HTTP/1.1\r\n")
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nnope\n")

        port, thread, server = serve(http)
        status, headers, body = net.http_get(port, "/x")
        thread.join(5)
        server.close()
        self.assertEqual((status, headers["content-type"], body), (404, "text/plain", "nope\n"))

    def test_a_short_body_is_an_error(self):
        def short(conn):
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

        port, thread, server = serve(short)
        with self.assertRaises(AssertionError):
            net.http_get(port, "/")
        thread.join(5)
        server.close()


class StopAfterInteractTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.build = Path(self.dir.name)

    def tearDown(self):
        self.dir.cleanup()

    def scenario(self, interact, **changes) -> Scenario:
        script = textwrap.dedent(
            """
            import sys, time
            with open(sys.argv[1], "w") as log:
                log.write("kernel: booting (PVH)\\nnet0: dhcp: address 10.0.2.15/24\\n"); log.flush()
                time.sleep(60)
            """
        )
        base = dict(
            name="fake-net",
            expect_status=KILLED,
            expect_in_order=[scenarios.BOOT_BANNER],
            command=lambda ctx: [sys.executable, "-c", script, str(ctx.log)],
            interact=interact,
            interact_after=r"dhcp: address",
            stop_after_interact=True,
            timeout_s=30,
        )
        base.update(changes)
        return Scenario(**base)

    def test_the_run_ends_when_the_interaction_returns(self):
        seen = []
        outcome = harness.run_scenario(self.scenario(lambda ctx: seen.append(ctx.name)), Path("/k"), self.build)
        self.assertEqual(outcome.status, KILLED)
        self.assertEqual(outcome.problems, [])
        self.assertEqual(seen, ["fake-net"])
        self.assertLess(outcome.wall_s, 10)

    def test_the_interactions_problems_fail_the_scenario(self):
        outcome = harness.run_scenario(self.scenario(lambda ctx: ["echo differs"]), Path("/k"), self.build)
        self.assertEqual(outcome.status, KILLED)
        self.assertEqual(outcome.problems, ["interact <lambda>: echo differs"])

    def test_without_the_flag_the_run_goes_on_to_its_timeout(self):
        outcome = harness.run_scenario(
            self.scenario(lambda ctx: None, stop_after_interact=False, timeout_s=2), Path("/k"), self.build
        )
        self.assertEqual(outcome.status, harness.TIMEOUT)


if __name__ == "__main__":
    unittest.main()
