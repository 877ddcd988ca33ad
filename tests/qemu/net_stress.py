"""The host side of the `net-stress-*` scenarios: load and abuse the
kernel's echo (port 7) and HTTP (port 80) servers through QEMU's `hostfwd=`
rules, then check that they still answer correctly and that the kernel's
own counters are back where they started (kernel/src/net/services.rs).

What `stress_session` does, each step bounded in time:

1. reads the counters from the status page (`GET /`: one
   `<li class="service">` line per service, `ServiceCounters`' Display);
2. at the same time: dozens of concurrent echo streams, every byte checked;
   four HTTP clients that send half a request and stall (issue 18's case),
   while a healthy GET must get its 200; an echo client that connects and
   says nothing; clients that reset mid-transfer (SO_LINGER 0);
3. malformed and oversized requests, one after another, each answered with
   its status and a clean close (EOF, no reset);
4. every HTTP slot held by a stalled client: the next client gets a 503, and
   once two stalled clients leave, a GET gets its 200 again; every echo slot
   held: the next client is refused (closed at once), then served once one
   leaves;
5. waits until the stalled clients have been timed out (408 for HTTP, a
   reset for echo);
6. waits (bounded) until the counters' levels are back to the start, checks
   the event counters moved as the load says they must, and that echo and
   HTTP still answer correctly.

Python standard library only.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: One service's counters (`ServiceCounters`' Display), after its name.
COUNTERS_TEXT = (
    r"(?P<service>echo|http) port (?P<port>\d+): "
    r"in use (?P<in_use>\d+)/(?P<capacity>\d+) \(peak (?P<peak>\d+)\), refusing (?P<refusing>\d+)/(?P<refusing_capacity>\d+), "
    r"accepted (?P<accepted>\d+), refused (?P<refused>\d+), closed (?P<closed>\d+), "
    r"timed out (?P<timed_out>\d+), reset (?P<reset>\d+), rejected (?P<rejected>\d+), "
    r"held (?P<held>\d+) B, queued (?P<queued>\d+) B, socket buffers (?P<socket_kib>\d+) KiB"
)
#: The line on the status page.
COUNTERS_LINE = re.compile(r'<li class="service">' + COUNTERS_TEXT + "</li>")
#: The line the shell's `sockets` command prints.
COUNTERS_SHELL_LINE = re.compile(r"^net0: " + COUNTERS_TEXT + r"\s*$", re.MULTILINE)
#: The fields that are levels (return to their start value when idle).
LEVELS = ("in_use", "refusing", "held", "queued")
#: How long a step may take before it counts as a hang.
STEP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Counters:
    """One service's counters, as the page shows them."""

    service: str
    values: dict[str, int]

    def __getitem__(self, key: str) -> int:
        return self.values[key]

    def levels(self) -> dict[str, int]:
        return {k: self.values[k] for k in LEVELS}


def parse_counters(page: str, pattern: re.Pattern[str] = COUNTERS_LINE) -> dict[str, Counters]:
    """`{"echo": Counters, "http": Counters}` of the first card on `page`
    (or in the shell's `sockets` output, with `COUNTERS_SHELL_LINE`).
    Raises AssertionError if a service's line is missing."""
    found: dict[str, Counters] = {}
    for match in pattern.finditer(page):
        service = match["service"]
        if service not in found:
            found[service] = Counters(service, {k: int(v) for k, v in match.groupdict().items() if k != "service"})
    missing = {"echo", "http"} - found.keys()
    if missing:
        raise AssertionError(f"no counters for {sorted(missing)} in {page[:200]!r}")
    return found


def connect(port: int, timeout_s: float = STEP_TIMEOUT_S) -> socket.socket:
    """A TCP connection to 127.0.0.1:`port` (QEMU's side of hostfwd accepts at once)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def read_all(sock: socket.socket) -> tuple[bytes, str]:
    """Reads until EOF; returns (bytes, how it ended: "eof", "reset" or "timeout")."""
    data = bytearray()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(data), "eof"
            data.extend(chunk)
    except ConnectionResetError:
        return bytes(data), "reset"
    except TimeoutError:
        return bytes(data), "timeout"


def status_of(response: bytes) -> int | None:
    """The status code of an HTTP response, or None if it is not one."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(match[1]) if match else None


def http_exchange(port: int, request: bytes, timeout_s: float = STEP_TIMEOUT_S) -> tuple[int | None, bytes, str]:
    """Sends `request`, reads the answer to EOF: (status, response, ending)."""
    with connect(port, timeout_s) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before taking all of it
        response, ending = read_all(sock)
    return status_of(response), response, ending


def get(port: int, path: str = "/") -> tuple[int | None, bytes, str]:
    return http_exchange(port, f"GET {path} HTTP/1.1\r\nHost: guest\r\n\r\n".encode())


def counters(port: int) -> dict[str, Counters]:
    status, response, ending = get(port)
    if status != 200 or ending != "eof":
        raise AssertionError(f"GET / for the counters: status {status}, ended by {ending}")
    return parse_counters(response.decode("utf-8", "replace"))


def echo_stream(port: int, data: bytes, chunk: int = 4096, sock: socket.socket | None = None) -> str:
    """Sends `data` in chunks (on `sock`, or a new connection) while a second
    thread reads the echo; returns "" if every byte came back in order, else
    what went wrong."""
    sock = sock if sock is not None else connect(port)
    received = bytearray()
    failure: list[str] = []

    def reader() -> None:
        try:
            while len(received) < len(data):
                got = sock.recv(65536)
                if not got:
                    break
                received.extend(got)
        except OSError as err:
            failure.append(f"reading: {err!r}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for at in range(0, len(data), chunk):
            sock.sendall(data[at : at + chunk])
        sock.shutdown(socket.SHUT_WR)
        thread.join(STEP_TIMEOUT_S)
        rest, ending = read_all(sock) if not thread.is_alive() else (b"", "timeout")
        received.extend(rest)
    except OSError as err:
        failure.append(f"sending: {err!r}")
        ending = "error"
    finally:
        sock.close()
    if failure:
        return f"{failure[0]} after {len(received)} of {len(data)} bytes"
    if bytes(received) != data:
        same = next((i for i, (a, b) in enumerate(zip(received, data)) if a != b), min(len(received), len(data)))
        return f"{len(received)} of {len(data)} bytes back, first difference at byte {same}"
    if ending != "eof":
        return f"all bytes back but the connection ended by {ending}"
    return ""


def abort(sock: socket.socket) -> None:
    """Closes with a reset (SO_LINGER 0), as a crashing client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def run_parallel(jobs: list[Callable[[], str]], stagger_s: float = 0.0) -> list[str]:
    """Runs every job in a thread of its own, started `stagger_s` apart;
    returns their results in order."""
    results = [""] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except Exception as err:  # reported, not raised: other jobs go on
            results[i] = f"raised {err!r}"

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
        time.sleep(stagger_s)
    for thread in threads:
        thread.join(STEP_TIMEOUT_S * 2)
    return [r if not t.is_alive() else "still running (hang)" for r, t in zip(results, threads)]


#: Malformed, oversized and odd requests, and the status each must get.
BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    ("binary garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64), 400),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("no version", b"GET /\r\n\r\n", 400),
    ("header without a colon", b"GET / HTTP/1.1\r\nHost guest\r\n\r\n", 400),
    ("unknown path", b"GET /no/such/page HTTP/1.1\r\nHost: guest\r\n\r\n", 404),
    ("DELETE", b"DELETE / HTTP/1.1\r\nHost: guest\r\n\r\n", 405),
    ("a body", b"POST / HTTP/1.1\r\nHost: guest\r\nContent-Length: 5\r\n\r\nhello", 413),
    ("a 2 KiB target", b"GET /" + b"a" * 2048 + b" HTTP/1.1\r\nHost: guest\r\n\r\n", 414),
    ("a 16 KiB header", b"GET / HTTP/1.1\r\nHost: guest\r\nX-Big: " + b"b" * 16384 + b"\r\n\r\n", 431),
    ("100 header fields", b"GET / HTTP/1.1\r\nHost: guest\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
    ("chunked body", b"POST / HTTP/1.1\r\nHost: guest\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: guest\r\n\r\n", 505),
    ("half a request, then FIN", b"GET / HTTP/1.1\r\nHo", 400),
]


def stress_session(echo_port: int, http_port: int, *, echo_streams: int = 24, echo_bytes: int = 96 * 1024,
                   request_timeout_s: float = 5.0, idle_timeout_s: float = 4.0,
                   close_timeout_s: float = 5.0, final_echo_bytes: int = 256 * 1024,
                   stagger_s: float = 0.02, min_concurrent: int = 16) -> list[str]:
    """Everything the module docs list; returns the problems found."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    start = counters(http_port)
    echo_capacity, http_capacity = start["echo"]["capacity"], start["http"]["capacity"]
    expect(start["echo"]["in_use"] == 0 and start["http"]["in_use"] == 1,
           f"at the start: echo {start['echo'].levels()}, http {start['http'].levels()} (expected 0 and 1, this GET)")

    # 2. Concurrent load and misbehaving clients.
    stalled_http = []
    for _ in range(4):
        sock = connect(http_port)
        sock.sendall(b"GET / HTT")
        stalled_http.append(sock)
        time.sleep(stagger_s)
    stalled_since = time.monotonic()
    time.sleep(stagger_s)
    silent_echo = connect(echo_port)

    def resetting_echo(delay_s: float) -> str:
        time.sleep(delay_s)  # not in the same instant as the other (hostfwd's backlog)
        sock = connect(echo_port)
        sock.sendall(os.urandom(64 * 1024))
        sock.recv(1024)
        abort(sock)
        return ""

    def resetting_http() -> str:
        sock = connect(http_port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: gu")
        time.sleep(0.2)
        abort(sock)
        return ""

    def healthy_get() -> str:
        time.sleep(0.1)
        status, _, ending = get(http_port)
        return "" if status == 200 and ending == "eof" else f"GET / beside stalled clients: {status}, {ending}"

    # Connected one after another, then all sending at once: QEMU's hostfwd
    # listens with a backlog of 1, and a burst of connects overflows it (the
    # host resets some before the guest sees a SYN; seen in a capture).
    stream_socks = []
    for _ in range(echo_streams):
        stream_socks.append(connect(echo_port))
        time.sleep(stagger_s)
    streams = [lambda i=i: echo_stream(echo_port, os.urandom(echo_bytes + 997 * i), sock=stream_socks[i])
               for i in range(echo_streams)]
    jobs = streams + [lambda: resetting_echo(0.0), lambda: resetting_echo(0.1), resetting_http, healthy_get]
    t0 = time.monotonic()
    results = run_parallel(jobs)
    load_s = time.monotonic() - t0
    for i, result in enumerate(results):
        expect(result == "", f"load job {i} ({'echo stream' if i < len(streams) else 'client'}): {result}")

    timings = {"load": load_s}
    after_load = counters(http_port)
    peak = after_load["echo"]["peak"]
    expect(peak >= min_concurrent, f"echo: at most {peak} streams at once during the load, expected {min_concurrent}")
    t0 = time.monotonic()
    # 3. Malformed and oversized requests.
    for what, request, want in BAD_REQUESTS:
        if what.endswith("then FIN"):
            with connect(http_port) as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                response, ending = read_all(sock)
            status = status_of(response)
        else:
            status, response, ending = http_exchange(http_port, request)
        expect(status == want and ending == "eof",
               f"{what}: status {status} (expected {want}), ended by {ending}: {response[:60]!r}")
    status, response, ending = http_exchange(http_port, b"HEAD / HTTP/1.1\r\nHost: guest\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    expect(status == 200 and body == b"" and b"Content-Length: " in head and ending == "eof",
           f"HEAD /: status {status}, {len(body)} body bytes, ended by {ending}")

    timings["bad requests"] = time.monotonic() - t0
    t0 = time.monotonic()
    # 4. The stalled clients are timed out: 408 for HTTP, a reset for echo.
    for i, sock in enumerate(stalled_http):
        sock.settimeout(max(1.0, request_timeout_s + 3.0 - (time.monotonic() - stalled_since)))
        response, ending = read_all(sock)
        expect(status_of(response) == 408, f"stalled HTTP client {i}: {response[:40]!r} ({ending}), expected 408")
        sock.close()
    silent_echo.settimeout(idle_timeout_s + 3.0)
    got, ending = read_all(silent_echo)
    expect(got == b"" and ending in ("eof", "reset"), f"silent echo client: {got[:20]!r}, {ending}")
    silent_echo.close()

    settled = wait_for_levels(http_port, start, close_timeout_s + 3.0)
    expect(settled is None, f"before filling every slot: {settled}")

    timings["timeouts"] = time.monotonic() - t0
    t0 = time.monotonic()
    # 5. Every slot busy: refusal, then service as soon as slots free.
    holders = []
    for _ in range(http_capacity):
        sock = connect(http_port)
        sock.sendall(b"GET")
        holders.append(sock)
        time.sleep(0.1)  # one at a time through hostfwd's backlog of 1
    time.sleep(0.5)
    busy = status_of_get(http_port)
    expect(busy == 503, f"every HTTP slot held: a new client got {busy}, expected 503")
    for sock in holders[:2]:
        sock.shutdown(socket.SHUT_WR)
        read_all(sock)
        sock.close()
    resumed = retry_until(lambda: get(http_port)[0] == 200, 3.0)
    expect(resumed, "two HTTP slots freed: GET / still not served within 3 s")

    # One at a time, each echoing a byte: QEMU's hostfwd listens with a
    # backlog of 1, so a burst of connects waits on the host's SYN
    # retransmission (1 s, 2 s, ...) and the first holders would time out.
    echo_holders = []
    for _ in range(echo_capacity):
        sock = connect(echo_port)
        sock.sendall(b"x")
        echo_holders.append(sock)
        if sock.recv(1) != b"x":
            problems.append(f"echo slot holder {len(echo_holders)}: not served")
    with connect(echo_port) as extra:
        extra.settimeout(STEP_TIMEOUT_S)
        try:
            extra.sendall(b"refused?")
        except OSError:
            pass
        got, ending = read_all(extra)
    expect(got == b"", f"every echo slot held: the next client got {got[:20]!r} ({ending}), expected a close")
    abort(echo_holders[0])
    served = retry_until(lambda: echo_stream(echo_port, b"back again" * 100) == "", 3.0)
    expect(served, "one echo slot freed: a new stream still not served within 3 s")
    for sock in echo_holders[1:]:
        sock.close()
    for sock in holders[2:]:
        sock.settimeout(request_timeout_s + 3.0)
        response, _ = read_all(sock)
        expect(status_of(response) == 408, f"HTTP slot holder: {response[:40]!r}, expected 408")
        sock.close()

    timings["every slot busy"] = time.monotonic() - t0
    t0 = time.monotonic()
    # 6. Back to the start, and still correct.
    settled = wait_for_levels(http_port, start, close_timeout_s + idle_timeout_s + 5.0)
    expect(settled is None, f"after the load: {settled}")
    end = counters(http_port)
    moved = {s: {k: end[s][k] - start[s][k] for k in ("accepted", "refused", "timed_out", "reset", "rejected")}
             for s in ("echo", "http")}
    expect(moved["echo"]["accepted"] >= echo_streams + echo_capacity, f"echo counters: {moved['echo']}")
    expect(end["echo"]["peak"] == echo_capacity, f"echo: at most {end['echo']['peak']} connections at once, "
           f"expected every slot ({echo_capacity}) while they were all held")
    expect(moved["echo"]["refused"] >= 1, f"echo: no refusal counted: {moved['echo']}")
    expect(moved["echo"]["timed_out"] >= 1, f"echo: the silent client was not timed out: {moved['echo']}")
    expect(moved["http"]["refused"] >= 1, f"http: no 503 counted: {moved['http']}")
    expect(moved["http"]["timed_out"] >= 4 + http_capacity - 2, f"http: too few timeouts: {moved['http']}")
    expect(moved["http"]["rejected"] >= 10, f"http: too few rejected requests: {moved['http']}")
    result = echo_stream(echo_port, os.urandom(final_echo_bytes))
    expect(result == "", f"echo after the load: {result}")
    status, _, ending = get(http_port)
    expect(status == 200 and ending == "eof", f"GET / after the load: {status}, {ending}")
    timings["settle and final checks"] = time.monotonic() - t0
    print("net-stress: seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; echo streams at once: {peak}", flush=True)
    return problems


def wait_for_levels(port: int, start: dict[str, Counters], seconds: float) -> str | None:
    """Waits until every level is back to `start`; None, or what still differs."""
    deadline = time.monotonic() + seconds
    while True:
        now = counters(port)
        differ = {s: (now[s].levels(), start[s].levels()) for s in ("echo", "http")
                  if now[s].levels() != start[s].levels()}
        if not differ:
            return None
        if time.monotonic() > deadline:
            return "; ".join(f"{s} levels {a} (at the start {b})" for s, (a, b) in differ.items())
        time.sleep(0.3)


def status_of_get(port: int) -> int | None:
    """The status a GET / gets (None on a reset or no answer)."""
    try:
        return get(port)[0]
    except OSError:
        return None


def retry_until(attempt: Callable[[], bool], seconds: float) -> bool:
    """Tries `attempt` until it returns True or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if attempt():
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
