"""The host side of the virtio-blk scenarios: data patterns, log parsing, image checks.

The guest's block self-tests (kernel/src/block/selftests/) write data the
host can regenerate: the 8 bytes at disk offset 8*k are output number k of
SplitMix64 started at the region's seed (kernel/src/block/pattern.rs). Each
region is announced on the serial port, in the order the writes happened:

    blk: wrote serial=<s> sector=<n> count=<n> seed=<hex> crc32=<hex>
    blk: zeroed serial=<s> sector=<n> count=<n>
    blk: discarded serial=<s> sector=<n> count=<n>
    blk: write-failed serial=<s> sector=<n> count=<n>
    blk: verified serial=<s> sector=<n> count=<n> seed=<hex> crc32=<hex>

`check_image` replays them over the image's initial contents and compares
the result with the image QEMU left behind: every byte of the disk, written
or not, must be what the guest says. It then proves that it can fail by
flipping one byte of a written region and checking again.

Each disk the kernel claims prints one line (docs/contract.md):

    block: vda at pci 0000:00:03.0 transport=pci-modern serial=scratch0 sectors=32768 block_size=512 read_only=no queue_size=256 max_segments=32 features=A|B|C
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SECTOR = 512
MiB = 1024 * 1024

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(seed: int, index: int) -> int:
    """Output number `index` of SplitMix64 started at `seed` (pattern.rs `word`)."""
    z = (seed + (index + 1) * _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def pattern(seed: int, offset: int, length: int) -> bytes:
    """The bytes the guest writes at disk byte `offset` with `seed` (both multiples of 8)."""
    if offset % 8 or length % 8:
        raise ValueError("pattern offsets and lengths are multiples of 8")
    first = offset // 8
    words = []
    append = words.append
    s = (seed + (first + 1) * _GAMMA) & _MASK
    for _ in range(length // 8):
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        append(z ^ (z >> 31))
        s = (s + _GAMMA) & _MASK
    return struct.pack(f"<{len(words)}Q", *words)


def derive_seed(base: int, tag: int) -> int:
    """pattern.rs `derive_seed`."""
    return splitmix64(base, tag ^ 0x5EED_0000_0000)


def original(path: Path) -> Path:
    """Where `disk_image` keeps the image's initial contents for the check."""
    return path.with_name(path.name + ".orig")


def disk_image(serial: str, size: int, fill_seed: int | None = None) -> Callable[[Path], None]:
    """A `files` generator: a raw image of `size` bytes, sparse (zeroes) or,
    with `fill_seed`, holding the pattern of that seed; sector 0 starts with
    `virtio-probe:<serial>\\n` (the marker `expect.blk.serial=` makes the
    virtio self-test look for; the rest of sector 0 is zero). A copy of the
    initial contents goes to `original(path)`."""

    def make(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = f"virtio-probe:{serial}\n".encode().ljust(SECTOR, b"\0")
        filled = None
        if fill_seed is not None:
            filled = marker + pattern(fill_seed, SECTOR, size - SECTOR)
        for target in (path, original(path)):
            with open(target, "wb") as image:
                if filled is None:
                    image.truncate(size)  # sparse: reads as zeroes
                    image.write(marker)
                else:
                    image.write(filled)

    make.__name__ = f"disk_image_{serial}"
    return make


# ---------------------------------------------------------------- the log

BLOCK_LINE = re.compile(
    r"^block: (?P<name>vd[a-z]+) at (?P<location>.+?) transport=(?P<transport>\S+) "
    r"serial=(?P<serial>\S+) sectors=(?P<sectors>\d+) block_size=(?P<block_size>\d+) "
    r"read_only=(?P<read_only>yes|no) queue_size=(?P<queue_size>\d+) "
    r"max_segments=(?P<max_segments>\d+) features=(?P<features>\S+)$",
    re.MULTILINE,
)

OP_LINE = re.compile(
    r"^blk: (?P<op>wrote|zeroed|discarded|write-failed|verified) serial=(?P<serial>\S+) "
    r"sector=(?P<sector>\d+) count=(?P<count>\d+)"
    r"(?: seed=(?P<seed>0x[0-9a-f]+) crc32=(?P<crc>0x[0-9a-f]+))?$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class DiskLine:
    name: str
    location: str
    transport: str
    serial: str
    sectors: int
    block_size: int
    read_only: bool
    queue_size: int
    max_segments: int
    features: tuple[str, ...]


@dataclass(frozen=True)
class Op:
    op: str
    serial: str
    sector: int
    count: int
    seed: int | None = None
    crc: int | None = None


def disk_lines(log: str) -> list[DiskLine]:
    """The `block:` lines, in the order printed (vda first)."""
    return [
        DiskLine(
            name=m["name"],
            location=m["location"],
            transport=m["transport"],
            serial=m["serial"],
            sectors=int(m["sectors"]),
            block_size=int(m["block_size"]),
            read_only=m["read_only"] == "yes",
            queue_size=int(m["queue_size"]),
            max_segments=int(m["max_segments"]),
            features=tuple(m["features"].split("|")),
        )
        for m in BLOCK_LINE.finditer(log)
    ]


def ops(log: str, serial: str) -> list[Op]:
    """The `blk:` region lines of one disk, in order."""
    out = []
    for m in OP_LINE.finditer(log):
        if m["serial"] != serial:
            continue
        out.append(Op(
            op=m["op"], serial=serial, sector=int(m["sector"]), count=int(m["count"]),
            seed=int(m["seed"], 16) if m["seed"] else None,
            crc=int(m["crc"], 16) if m["crc"] else None,
        ))  # fmt: skip
    return out


# ---------------------------------------------------------------- the image


@dataclass
class Expected:
    """What the image must hold after the guest's writes."""

    data: bytearray
    #: Sectors that may also read as all zeroes (discarded).
    may_be_zero: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    written: int = 0  # sectors announced as written


def replay(initial: bytes, operations: Sequence[Op]) -> Expected:
    """Applies the announced operations, in order, to the initial contents."""
    expected = Expected(bytearray(initial))
    size = len(initial)
    for op in operations:
        start, length = op.sector * SECTOR, op.count * SECTOR
        sectors = range(op.sector, op.sector + op.count)
        if op.count <= 0 or start + length > size:
            expected.problems.append(f"{op}: outside the {size}-byte image")
            continue
        if op.op == "wrote":
            assert op.seed is not None and op.crc is not None
            data = pattern(op.seed, start, length)
            crc = zlib.crc32(data)
            if crc != op.crc:
                expected.problems.append(
                    f"{op}: the host's pattern has crc32 {crc:#010x}: guest and host generators disagree")
            expected.data[start:start + length] = data
            expected.may_be_zero.difference_update(sectors)
            expected.written += op.count
        elif op.op == "zeroed":
            expected.data[start:start + length] = bytes(length)
            expected.may_be_zero.difference_update(sectors)
        elif op.op == "discarded":
            expected.may_be_zero.update(sectors)
        elif op.op in ("write-failed", "verified"):
            pass  # nothing changed
        else:
            expected.problems.append(f"unknown operation {op.op!r}")
    return expected


def compare(image: bytes, expected: Expected, limit: int = 5) -> list[str]:
    """Differences between the image and what it must hold, sector by sector."""
    if len(image) != len(expected.data):
        return [f"image is {len(image)} bytes, expected {len(expected.data)}"]
    if image == expected.data:
        return []
    problems = []
    zero = bytes(SECTOR)
    bad = 0
    for sector in range(len(image) // SECTOR):
        start = sector * SECTOR
        got = image[start:start + SECTOR]
        want = expected.data[start:start + SECTOR]
        if got == want or (sector in expected.may_be_zero and got == zero):
            continue
        bad += 1
        if len(problems) < limit:
            at = next(i for i in range(SECTOR) if got[i] != want[i])
            problems.append(f"sector {sector} byte {at}: image has {got[at]:#04x}, expected {want[at]:#04x}")
    if bad > limit:
        problems.append(f"... {bad} sectors differ in all")
    return problems


def check_image(image_path: Path, initial: bytes, log: str, serial: str,
                must_write: bool = True) -> list[str]:
    """The image of disk `serial` holds exactly what the guest announced."""
    image = image_path.read_bytes()
    operations = ops(log, serial)
    expected = replay(initial, operations)
    problems = list(expected.problems)
    if must_write and expected.written == 0:
        problems.append(f"{serial}: the guest announced no writes")
    if not must_write and any(op.op in ("wrote", "zeroed", "discarded") for op in operations):
        problems.append(f"{serial}: the guest announced writes to a disk it must not write")
    problems += [f"{serial}: {p}" for p in compare(image, expected)]
    for op in operations:
        if op.op == "verified":
            got = zlib.crc32(image[op.sector * SECTOR:(op.sector + op.count) * SECTOR])
            if got != op.crc:
                problems.append(f"{serial}: {op}: the image's crc32 is {got:#010x}")
    if problems:
        return problems
    # The check must be able to fail: one wrong byte in the last written
    # region (or anywhere, for a disk without writes) must be reported.
    written = [op for op in operations if op.op == "wrote"]
    target = written[-1] if written else Op("wrote", serial, 0, max(1, len(image) // SECTOR))
    corrupt = bytearray(image)
    at = (target.sector * SECTOR + target.count * SECTOR // 2) % len(corrupt)
    corrupt[at] ^= 0x01
    if not compare(bytes(corrupt), expected):
        problems.append(f"{serial}: the image check did not notice a flipped byte at offset {at}")
    return problems


def require(condition: bool, message: str, problems: list[str]) -> None:
    if not condition:
        problems.append(message)


def disk_problems(lines: Iterable[DiskLine], want: dict[str, dict[str, object]]) -> list[str]:
    """Each `block:` line of a serial in `want` has the listed attribute values.

    Values that are tuples of strings for `features` mean "must contain";
    a key `features_absent` lists features that must be missing.
    """
    problems: list[str] = []
    by_serial = {line.serial: line for line in lines}
    for serial, attributes in want.items():
        line = by_serial.get(serial)
        if line is None:
            problems.append(f"no `block:` line for serial {serial}")
            continue
        for key, value in attributes.items():
            if key == "features":
                missing = [f for f in value if f not in line.features]  # type: ignore[union-attr]
                require(not missing, f"{line.name} ({serial}): features lack {missing}", problems)
            elif key == "features_absent":
                present = [f for f in value if f in line.features]  # type: ignore[union-attr]
                require(not present, f"{line.name} ({serial}): features include {present}", problems)
            else:
                got = getattr(line, key)
                require(got == value, f"{line.name} ({serial}): {key}={got!r}, expected {value!r}", problems)
    return problems
