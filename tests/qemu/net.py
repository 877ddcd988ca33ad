"""The host side of the virtio-net scenarios: what a test on the host does
with a guest that runs the kernel's network services, and how it reads the
capture QEMU's `filter-dump` writes.

- `echo_round_trip`: sends bytes to the guest's TCP echo server (port 7,
  reached through a `hostfwd=` rule) while reading them back in another
  thread, and says whether every byte came back, in order.
- `http_get`: one HTTP/1.x GET, returning the status code and body.
- `read_pcap` / `dhcp_messages`: the classic libpcap file format (the one
  filter-dump writes: a 24-byte global header, then a 16-byte header per
  frame) and the DHCP messages (RFC 2131) in it, decoded far enough to say
  who asked, who answered, which address was offered and to which MAC.

Python standard library only.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: pcap magic numbers: microsecond timestamps, little- or big-endian.
PCAP_MAGIC_LE = 0xA1B2C3D4
#: Link type 1: Ethernet.
LINKTYPE_ETHERNET = 1
#: DHCP message types (RFC 2132 option 53).
DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}
#: The magic cookie that starts the DHCP options (RFC 2131 §3).
DHCP_COOKIE = b"\x63\x82\x53\x63"


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ip_text(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def read_pcap(path: Path) -> list[bytes]:
    """The frames of a libpcap capture, in order. Raises ValueError on a
    file that is not one (wrong magic, a truncated record, not Ethernet)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a pcap header")
    magic_le = struct.unpack_from("<I", data, 0)[0]
    if magic_le == PCAP_MAGIC_LE:
        order = "<"
    elif struct.unpack_from(">I", data, 0)[0] == PCAP_MAGIC_LE:
        order = ">"
    else:
        raise ValueError(f"{path}: not a pcap file (magic {data[:4].hex()})")
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    frames = []
    offset = 24
    while offset < len(data):
        if offset + 16 > len(data):
            raise ValueError(f"{path}: truncated record header at {offset}")
        _sec, _usec, incl_len, _orig_len = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        if offset + incl_len > len(data):
            raise ValueError(f"{path}: truncated frame at {offset}")
        frames.append(data[offset : offset + incl_len])
        offset += incl_len
    return frames


@dataclass(frozen=True)
class DhcpMessage:
    """One DHCP message as seen on the wire."""

    kind: str  # DISCOVER, OFFER, REQUEST, ACK, ...
    eth_src: str
    eth_dst: str
    op: int  # 1 request (client to server), 2 reply
    xid: int
    chaddr: str  # the client's hardware address, as the message says
    yiaddr: str  # "your" address (offers and acks)


def dhcp_messages(frames: list[bytes]) -> list[DhcpMessage]:
    """Every DHCP message (IPv4, UDP ports 67/68) in `frames`."""
    found = []
    for frame in frames:
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[0] >> 4 != 4 or ip[9] != 17 or len(ip) < ihl + 8:
            continue
        udp = ip[ihl:]
        src_port, dst_port = struct.unpack_from(">HH", udp, 0)
        if {src_port, dst_port} != {67, 68}:
            continue
        bootp = udp[8:]
        if len(bootp) < 240 or bootp[236:240] != DHCP_COOKIE:
            continue
        kind = None
        options = bootp[240:]
        i = 0
        while i < len(options):
            code = options[i]
            if code == 255:
                break
            if code == 0:
                i += 1
                continue
            if i + 1 >= len(options):
                break
            length = options[i + 1]
            if code == 53 and length >= 1 and i + 2 < len(options):
                kind = DHCP_TYPES.get(options[i + 2], f"type{options[i + 2]}")
            i += 2 + length
        if kind is None:
            continue
        hlen = min(bootp[2], 16)
        found.append(
            DhcpMessage(
                kind=kind,
                eth_src=mac_text(frame[6:12]),
                eth_dst=mac_text(frame[0:6]),
                op=bootp[0],
                xid=struct.unpack_from(">I", bootp, 4)[0],
                chaddr=mac_text(bootp[28 : 28 + hlen]),
                yiaddr=ip_text(bootp[16:20]),
            )
        )
    return found


def check_dhcp_exchange(messages: list[DhcpMessage], mac: str, address: str) -> list[str]:
    """The guest with `mac` asked (DISCOVER, REQUEST, from its own MAC, with
    its MAC as chaddr) and was answered (OFFER, ACK for that chaddr and
    `address`), all in one transaction, in that order."""
    problems = []
    mine = [m for m in messages if m.chaddr == mac]
    kinds = [m.kind for m in mine]
    for want in ("DISCOVER", "OFFER", "REQUEST", "ACK"):
        if want not in kinds:
            problems.append(f"no DHCP {want} for {mac} (messages: {kinds or 'none'})")
    if problems:
        return problems
    order = [kinds.index(k) for k in ("DISCOVER", "OFFER", "REQUEST", "ACK")]
    if order != sorted(order):
        problems.append(f"DHCP messages out of order: {kinds}")
    for m in mine:
        if m.op == 1 and m.eth_src != mac:
            problems.append(f"{m.kind} sent from {m.eth_src}, not from the guest's {mac}")
        if m.kind in ("OFFER", "ACK") and m.yiaddr != address:
            problems.append(f"{m.kind} offers {m.yiaddr}, expected {address}")
    ack = next(m for m in mine if m.kind == "ACK")
    request = next(m for m in mine if m.kind == "REQUEST")
    if ack.xid != request.xid:
        problems.append(f"ACK xid {ack.xid:#x} answers no REQUEST (xid {request.xid:#x})")
    return problems


def connect(port: int, timeout_s: float = 20.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:`port`, retried while the guest is not
    listening yet (QEMU accepts the host side at once and closes it when the
    guest refuses, so a refused or reset connection is retried too)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def echo_round_trip(port: int, data: bytes, timeout_s: float = 60.0) -> tuple[bytes, float]:
    """Sends `data` to the echo server and reads the echo concurrently (a
    client that only wrote would stall once both sides' buffers fill).
    Returns what came back and the seconds it took."""
    sock = connect(port)
    sock.settimeout(timeout_s)
    received = bytearray()
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            while len(received) < len(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)
        except BaseException as err:  # reported to the caller
            failure.append(err)

    start = time.monotonic()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        thread.join(timeout_s)
    finally:
        sock.close()
    elapsed = time.monotonic() - start
    if failure:
        raise AssertionError(f"echo: reading failed after {len(received)} bytes: {failure[0]}")
    return bytes(received), elapsed


def http_get(port: int, path: str = "/", timeout_s: float = 20.0) -> tuple[int, dict[str, str], str]:
    """One GET; returns (status code, headers, body). Reads until the server
    closes the connection (the kernel's server says `Connection: close`)."""
    sock = connect(port)
    sock.settimeout(timeout_s)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n".encode())
        response = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response.extend(chunk)
    finally:
        sock.close()
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/1."):
        raise AssertionError(f"not an HTTP response: {bytes(response[:80])!r}")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None and int(length) != len(body):
        raise AssertionError(f"Content-Length {length} but {len(body)} body bytes")
    return status, headers, body.decode("utf-8", "replace")


class Monitor:
    """QEMU's human monitor on a unix socket (`-monitor unix:PATH,server=on,wait=off`)."""

    def __init__(self, path: Path, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout_s)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._read_prompt()

    def _read_prompt(self) -> str:
        got = bytearray()
        while not got.endswith(b"(qemu) "):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"monitor closed: {bytes(got)!r}")
            got.extend(chunk)
        return got.decode("utf-8", "replace")

    def command(self, line: str) -> str:
        """Runs one command and returns what the monitor printed."""
        self.sock.sendall(line.encode() + b"\n")
        return self._read_prompt()

    def close(self) -> None:
        self.sock.close()


def wait_for_line(log: Path, pattern: str, after: int = 0, timeout_s: float = 20.0) -> int | None:
    """Waits until the serial log has a line matching `pattern` past byte
    `after`; returns the offset just past the match, or None on timeout."""
    import re

    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = Path(log).read_bytes().decode("utf-8", "replace")
        found = regex.search(text, after)
        if found:
            return found.end()
        time.sleep(0.05)
    return None
