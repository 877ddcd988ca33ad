"""The soak: block I/O in the guest and network load from the host, together.

The guest runs `soak=on` (`kernel/src/soak.rs`, self-test build): block
rounds on its scratch disk (write, read back, compare; an older region
re-read; a FLUSH every 16 rounds) and the echo and HTTP services, with a
counters line every second. The host, once the guest has its DHCP lease:

1. warms up (a few echo streams and GETs, so that buffers the services
   keep for good are allocated), then takes the guest's next counters line
   as the baseline;
2. runs the load until the guest says `soak: blk done`: `ECHO_STREAMS`
   threads each sending seeded random chunks (1 byte to 64 KiB) through TCP
   echo and checking every byte that comes back, reconnecting every few
   chunks (connections come and go), and one thread fetching `/` and a
   missing page over HTTP, checking status and length; once, half-way,
   QMP `stop` for `PAUSE_S` and `cont` (a paused machine must resume with
   no error: its clock stops too, so no timeout may fire);
3. stops the load, waits for the guest to be idle for two counters lines,
   and compares them with the baseline: heap bytes in use and free frames
   must be back (within `HEAP_SLACK` bytes and `FRAME_SLACK` frames);
4. stops QEMU; the check then replays the guest's `blk: wrote` lines over
   the image and compares every byte (`blk.check_image`).

It fails on any echo byte lost or changed, an HTTP answer that is wrong or
late, a `soak: ERROR` line, a gap of more than `STALL_S` between counters
lines or between two of a client's successful operations (a stall), or
counters that grew. `x.py soak --minutes N` runs it for N minutes
(`soak_scenario`); `x.py test` runs `soak-short` (20 s of block rounds).
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import blk, net
from . import machine as qm
from .harness import DEFAULT_FORBID, KILLED, Outcome, RunContext, Scenario
from .qmp import Qmp, qmp_args

MiB = 1024 * 1024

#: Echo client threads.
ECHO_STREAMS = 3
#: A connection the guest resets before it answered anything was turned
#: away (every listening socket busy, one still closing): the client tries
#: again, up to this many times in a row before it calls it a stall.
MAX_TURNED_AWAY = 200
#: Chunks per echo connection before it is closed and another opened.
CHUNKS_PER_CONNECTION = 8
#: Longest any one client operation (or a counters line) may take.
STALL_S = 20.0
#: How long the machine is paused once, half-way.
PAUSE_S = 2.0
#: Growth allowed between the baseline and the end: the heap's bookkeeping
#: moves by a few hundred bytes with what the stack holds at the moment
#: (seen: +368 bytes at one instant, back to +168); a leak of anything per
#: connection or per request over thousands of them is far more.
HEAP_SLACK = 4096
FRAME_SLACK = 0

COUNTERS = re.compile(
    r"^soak: t=(?P<t>\d+) rounds=(?P<rounds>\d+) bytes=(?P<bytes>\d+) errors=(?P<errors>\d+) "
    r"heap_used=(?P<heap>\d+) frames_free=(?P<frames>\d+)"
    r"(?: sockets=(?P<sockets>\d+) held=(?P<held>\d+) queued=(?P<queued>\d+))?",
    re.MULTILINE,
)
DHCP_LINE = r"net0: dhcp: address 10\.0\.2\.15/24"
SERIAL = "scratch-soak0"


@dataclass
class Counters:
    """One `soak: t=...` line."""

    t: int
    rounds: int
    errors: int
    heap: int
    frames: int
    offset: int = 0
    #: Connection slots in use, bytes held and queued by the services (None
    #: from a kernel that does not print them).
    sockets: int | None = None
    held: int | None = None
    queued: int | None = None

    @staticmethod
    def all_in(text: str) -> list[Counters]:
        def number(value: str | None) -> int | None:
            return None if value is None else int(value)

        return [Counters(int(m["t"]), int(m["rounds"]), int(m["errors"]), int(m["heap"]), int(m["frames"]),
                         m.end(), number(m["sockets"]), number(m["held"]), number(m["queued"]))
                for m in COUNTERS.finditer(text)]


def growth_problems(baseline: Counters, end: Counters) -> list[str]:
    """Heap and frames back where they were (pure: unit-tested)."""
    problems = []
    if end.heap > baseline.heap + HEAP_SLACK:
        problems.append(f"heap in use grew from {baseline.heap} to {end.heap} bytes (t={baseline.t} -> {end.t})")
    if end.frames + FRAME_SLACK < baseline.frames:
        problems.append(f"free frames fell from {baseline.frames} to {end.frames} (t={baseline.t} -> {end.t})")
    for name in ("sockets", "held", "queued"):
        value = getattr(end, name)
        if value:
            problems.append(f"the services' {name} is {value} with no client left (t={end.t})")
    return problems


def stall_problems(lines: list[Counters], limit_s: float = STALL_S) -> list[str]:
    """Counters lines come every second of guest time; a gap means a stall."""
    problems = []
    for a, b in zip(lines, lines[1:]):
        if b.t - a.t > limit_s:
            problems.append(f"no counters line between t={a.t} and t={b.t}")
    return problems


@dataclass
class Load:
    """What the host's clients did, and what went wrong."""

    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    echo_bytes: int = 0
    echo_connections: int = 0
    http_gets: int = 0
    turned_away: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        with self.lock:
            if len(self.problems) < 20:
                self.problems.append(problem)
        self.stop.set()


def echo_client(port: int, load: Load, index: int) -> None:
    """Seeded chunks through echo; every byte compared; reconnects."""
    rng = random.Random(load.seed * 1000 + index)
    refused_in_a_row = 0
    while not load.stop.is_set():
        try:
            sock = net.connect(port, timeout_s=STALL_S)
        except OSError as err:
            load.fail(f"echo {index}: connect: {err}")
            return
        sock.settimeout(STALL_S)
        echoed = 0
        try:
            for _ in range(CHUNKS_PER_CONNECTION):
                if load.stop.is_set():
                    break
                size = rng.choice([1, 7, 512, 1460, 4096, rng.randrange(1, 65536)])
                data = rng.randbytes(size)
                sock.sendall(data)
                got = bytearray()
                while len(got) < size:
                    chunk = sock.recv(size - len(got))
                    if not chunk and echoed == 0 and not got:
                        raise ConnectionResetError("closed before echoing anything")
                    if not chunk:
                        load.fail(f"echo {index}: connection closed after {len(got)} of {size} bytes")
                        return
                    got.extend(chunk)
                if got != data:
                    at = next(i for i, (a, b) in enumerate(zip(got, data)) if a != b)
                    load.fail(f"echo {index}: byte {at} of a {size}-byte chunk came back {got[at]:#04x}, "
                              f"sent {data[at]:#04x}")
                    return
                echoed += size
                with load.lock:
                    load.echo_bytes += size
            sock.shutdown(socket.SHUT_WR)
            if sock.recv(1) != b"":
                load.fail(f"echo {index}: bytes after the echo")
                return
        except (ConnectionResetError, BrokenPipeError) as err:
            if echoed:
                load.fail(f"echo {index}: reset after {echoed} bytes echoed: {err}")
                return
            refused_in_a_row += 1
            with load.lock:
                load.turned_away += 1
            if refused_in_a_row > MAX_TURNED_AWAY:
                load.fail(f"echo {index}: turned away {refused_in_a_row} times in a row")
                return
            time.sleep(0.05)
            continue
        except OSError as err:
            load.fail(f"echo {index}: {type(err).__name__}: {err}")
            return
        finally:
            sock.close()
        refused_in_a_row = 0
        with load.lock:
            load.echo_connections += 1


def http_client(port: int, load: Load) -> None:
    """GET / (200, the status page) and a missing page (404), in turn."""
    refused_in_a_row = 0
    while not load.stop.is_set():
        for path, status_wanted in (("/", 200), ("/soak-missing", 404)):
            try:
                status, _, body = net.http_get(port, path, timeout_s=STALL_S)
            except ConnectionResetError:
                # Turned away: every HTTP socket busy (see MAX_TURNED_AWAY).
                refused_in_a_row += 1
                with load.lock:
                    load.turned_away += 1
                if refused_in_a_row > MAX_TURNED_AWAY:
                    load.fail(f"http GET {path}: turned away {refused_in_a_row} times in a row")
                    return
                time.sleep(0.05)
                continue
            except (OSError, AssertionError) as err:
                load.fail(f"http GET {path}: {err}")
                return
            refused_in_a_row = 0
            if status != status_wanted or (status == 200 and "</html>" not in body):
                load.fail(f"http GET {path}: status {status}, {len(body)} body bytes")
                return
            with load.lock:
                load.http_gets += 1


def run_load(ctx: RunContext, load: Load, until: str, pause_at_s: float | None) -> None:
    """The clients, until `until` appears in the serial log (or a failure)."""
    echo_port, http_port = ctx.port("echo"), ctx.port("http")
    threads = [threading.Thread(target=echo_client, args=(echo_port, load, i), daemon=True)
               for i in range(ECHO_STREAMS)]
    threads.append(threading.Thread(target=http_client, args=(http_port, load), daemon=True))
    for thread in threads:
        thread.start()
    start = time.monotonic()
    paused = pause_at_s is None
    while not load.stop.is_set():
        if not paused and time.monotonic() - start >= pause_at_s:
            paused = True
            qmp = Qmp(ctx.file("qmp.sock"))
            try:
                qmp.execute("stop")
                time.sleep(PAUSE_S)
                qmp.execute("cont")
            finally:
                qmp.close()
        if re.search(until, ctx.log.read_text("utf-8", "replace"), re.MULTILINE):
            break
        time.sleep(0.2)
    load.stop.set()
    for thread in threads:
        thread.join(STALL_S + 5)
        if thread.is_alive():
            load.fail(f"client {thread.name} still running {STALL_S + 5:g} s after the load ended")


def counters_after(ctx: RunContext, offset: int, count: int, timeout_s: float = 30.0) -> list[Counters]:
    """The next `count` counters lines after byte `offset` of the serial log."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [c for c in Counters.all_in(ctx.log.read_text("utf-8", "replace")) if c.offset > offset]
        if len(lines) >= count:
            return lines[:count]
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} counters lines in {timeout_s:g} s")
        time.sleep(0.2)


def soak_interaction(seconds: int, seed: int):
    """The host's side (module docs), for a guest soaking `seconds`."""

    def interact(ctx: RunContext) -> list[str]:
        if net.wait_for_line(ctx.log, DHCP_LINE, timeout_s=60.0) is None:
            return ["the guest never got its DHCP lease"]
        # 1. Warm-up, then the baseline.
        warm = Load(seed)
        for i in range(2):
            threading.Thread(target=echo_client, args=(ctx.port("echo"), warm, i), daemon=True).start()
        time.sleep(2.0)
        warm.stop.set()
        time.sleep(1.0)
        if warm.problems:
            return [f"warm-up: {p}" for p in warm.problems]
        mark = len(ctx.log.read_bytes())
        baseline = counters_after(ctx, mark, 2)[-1]
        # 2. The load, with one pause half-way.
        load = Load(seed)
        run_load(ctx, load, r"^soak: blk done", pause_at_s=seconds / 2)
        problems = list(load.problems)
        # 3. Idle again: counters back where they were.
        time.sleep(1.0)
        mark = len(ctx.log.read_bytes())
        end = counters_after(ctx, mark, 2)[-1]
        problems += growth_problems(baseline, end)
        print(f"soak: {seconds} s: {load.echo_bytes} echo bytes checked over {load.echo_connections} "
              f"connections ({load.turned_away} turned away and retried), {load.http_gets} HTTP answers, "
              f"paused {PAUSE_S:g} s once; heap {baseline.heap} -> {end.heap} bytes, "
              f"free frames {baseline.frames} -> {end.frames}; services at the end: sockets={end.sockets} "
              f"held={end.held} queued={end.queued}", flush=True)
        if load.echo_bytes == 0 or load.http_gets == 0:
            problems.append(f"the load did nothing: {load.echo_bytes} echo bytes, {load.http_gets} GETs")
        return problems

    return interact


def still_visible(operations: list[blk.Op]) -> list[blk.Op]:
    """The writes some sector of which no later write covers, in order: a
    long soak writes the same few regions tens of thousands of times, and
    replaying only these gives the same image in a fraction of the time."""
    covered: set[int] = set()
    kept = []
    for op in reversed(operations):
        sectors = set(range(op.sector, op.sector + op.count))
        if op.op != "wrote" or not sectors <= covered:
            kept.append(op)
        if op.op == "wrote":
            covered |= sectors
    return kept[::-1]


def image_problems(image_path: Path, log: str) -> list[str]:
    """The image holds what the guest's announced writes say (blk.check_image's
    comparison, over `still_visible` writes), and a flipped byte is noticed."""
    image = image_path.read_bytes()
    operations = still_visible(blk.ops(log, SERIAL))
    expected = blk.replay(blk.original(image_path).read_bytes(), operations)
    problems = list(expected.problems)
    if expected.written == 0:
        problems.append(f"{SERIAL}: the guest announced no writes")
    problems += [f"{SERIAL}: {p}" for p in blk.compare(image, expected)]
    if not problems:
        last = next(op for op in reversed(operations) if op.op == "wrote")
        corrupt = bytearray(image)
        corrupt[last.sector * blk.SECTOR] ^= 0x01
        if not blk.compare(bytes(corrupt), expected):
            problems.append(f"{SERIAL}: the image check did not notice a flipped byte")
    return problems


def check_soak(outcome: Outcome) -> list[str]:
    """After QEMU: no stall, no error, rounds made, the image as announced."""
    assert outcome.ctx is not None
    log = outcome.log_text
    lines = Counters.all_in(log)
    problems = stall_problems(lines)
    if not lines or lines[-1].rounds == 0:
        problems.append("no block rounds were made")
    elif lines[-1].errors:
        problems.append(f"{lines[-1].errors} block errors")
    if re.search(r"^soak: blk done", log, re.MULTILINE) is None:
        # Stopped with a write in flight: the image need not match.
        return problems + ["the block rounds did not finish; the image is not checked"]
    return problems + image_problems(outcome.ctx.file(f"{SERIAL}.img"), log)


def soak_scenario(name: str, seconds: int, seed: int = 1) -> Scenario:
    """A soak of `seconds` seconds of block rounds under load."""

    def devices(ctx: RunContext) -> list[str]:
        image = ctx.file(f"{SERIAL}.img")
        return [
            "-drive", f"if=none,id=soak0,format=raw,file={image},cache=writeback",
            "-device", f"virtio-blk-pci,drive=soak0,serial={SERIAL},disable-legacy=on",
            *qm.user_net_args("q35", hostfwd=[(ctx.port("echo"), 7), (ctx.port("http"), 80)]),
            *qmp_args(ctx.file("qmp.sock")),
        ]  # fmt: skip

    return Scenario(
        name=name,
        machine="q35",
        accel="tcg",
        devices=devices,
        files={f"{SERIAL}.img": blk.disk_image(SERIAL, 16 * MiB, None)},
        append=f"soak=on soak.seconds={seconds} blk.seed={seed}",
        kernel_features=("selftest",),
        expect_status=KILLED,
        expect_in_order=[r"^soak: start disk=vda", r"^soak: blk done rounds=\d+ errors=0$"],
        forbid=[*DEFAULT_FORBID, r"^soak: ERROR"],
        interact=soak_interaction(seconds, seed),
        interact_after=r"^soak: start",
        stop_after_interact=True,
        check=check_soak,
        timeout_s=seconds + 120.0,
    )


#: What `x.py test` runs: 20 s of block rounds under load.
SOAK_SCENARIOS = [soak_scenario("soak-short", 20)]
