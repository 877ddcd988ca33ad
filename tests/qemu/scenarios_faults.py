"""Faults below the driver: the host's storage fails or stops (issue 18).

Two scenarios, both `mode=selftest` under TCG, judged like every blk
scenario (the block self-tests pass, each image holds exactly what the
guest announced, the counters test finds no failure but the injected ones)
plus the fault tests of `kernel/src/block/selftests/faults.rs`:

- `blk-faults-blkdebug`: two disks reached through QEMU's `blkdebug`
  driver. On `scratch-faults0` every read of sector 1000 and every write of
  sector 3000 fail with EIO, the first read of sector 1100, the first write
  of sector 3100 and the first FLUSH fail once; on `scratch-flushfail0`
  every FLUSH fails. The guest sees IOERR for exactly those requests,
  retries the one-time ones successfully, and both disks keep serving.
- `blk-fault-hang-qmp`: a plain disk the host makes stop answering while
  the guest reads it: QMP `block_set_io_throttle` to 1 byte/s (QEMU then
  holds every request but the first for hours). The guest's read times out
  (2 s, `faults.rs`), the driver resets the device, and each later call
  recovers it and times out again until the host lifts the limit; then the
  same data reads back and writes work. QEMU's reset drains the held
  requests first (it completes them), which is what lets a reset end.

Why not QMP `stop`/`cont` for "stops answering": `stop` stops the guest's
CPU and clock with the device, so the guest sees no time pass (the soak uses
it to check that a paused machine resumes cleanly, `soak.py`).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

from .harness import RunContext, Scenario
from .qmp import Qmp, qmp_args
from .scenarios import MODERN, BlkDrive, blk_scenario

#: scratch-faults0's rules: every read of 1000 and write of 3000, the first
#: read of 1100, write of 3100 and flush fail with EIO (blkdebug's rule-file
#: format: QEMU docs/devel/blkdebug.txt; `iotype` keeps a rule to its kind of request).
BLKDEBUG_FAULTS = """\
[inject-error]
event = "read_aio"
iotype = "read"
errno = "5"
sector = "1000"

[inject-error]
event = "read_aio"
iotype = "read"
errno = "5"
sector = "1100"
once = "on"

[inject-error]
event = "write_aio"
iotype = "write"
errno = "5"
sector = "3000"

[inject-error]
event = "write_aio"
iotype = "write"
errno = "5"
sector = "3100"
once = "on"

[inject-error]
event = "flush_to_disk"
iotype = "flush"
errno = "5"
once = "on"
"""

#: scratch-flushfail0's rule: every flush fails.
BLKDEBUG_FLUSH_ALWAYS = """\
[inject-error]
event = "flush_to_disk"
iotype = "flush"
errno = "5"
"""

#: `-drive` options of the blkdebug disks: errors are reported to the guest
#: (not `werror=stop`, which would pause the machine).
REPORT = ",werror=report,rerror=report"

IOERR_LINE = r"block: vda: {} of 1 sector\(s\) at {} failed: device reported an I/O error \(IOERR\)$"

FAULTS_BLKDEBUG = blk_scenario(
    "blk-faults-blkdebug", "q35", "pci-modern",
    [BlkDrive("scratch-faults0", drive_opts=REPORT, props=MODERN, blkdebug=BLKDEBUG_FAULTS),
     BlkDrive("scratch-flushfail0", drive_opts=REPORT, props=MODERN, blkdebug=BLKDEBUG_FLUSH_ALWAYS)],
    append="expect.blk.ioerr=" + ",".join([
        "scratch-faults0:read:1000", "scratch-faults0:read-once:1100",
        "scratch-faults0:write:3000", "scratch-faults0:write-once:3100",
        "scratch-faults0:flush-once", "scratch-flushfail0:flush",
    ]),
    expect_anywhere=[
        r"^selftest: PASS block: injected I/O errors are reported",
        IOERR_LINE.format("read", 1000), IOERR_LINE.format("read", 1100),
        IOERR_LINE.format("write", 3000), IOERR_LINE.format("write", 3100),
        r"block: vda: flush failed: device reported an I/O error \(IOERR\)$",
        r"block: vdb: flush failed: device reported an I/O error \(IOERR\)$",
        r"block: vda: the first read at sector 1100 failed with IOERR as injected, the second went through",
        r"block: vda: the first write at sector 3100 failed with IOERR as injected, the second went through",
        r"block: vda: FLUSH failed with IOERR as injected \(once, then succeeded\)",
        r"block: vdb: FLUSH failed with IOERR as injected \(every time\)",
    ],
)  # fmt: skip

#: The `-drive` id of the disk the hang scenario stops (`blk_drive_args` names
#: the scenario's first drive `blk0`; QMP finds a BlockBackend by that name).
HANG_DRIVE = "blk0"
#: How long the host waits for each of the guest's turns.
TURN_TIMEOUT_S = 90.0


def throttle(qmp: Qmp, bytes_per_second: int) -> None:
    """QMP `block_set_io_throttle` on the hang disk (0: no limit)."""
    qmp.execute("block_set_io_throttle", device=HANG_DRIVE, bps=bytes_per_second, bps_rd=0, bps_wr=0,
                iops=0, iops_rd=0, iops_wr=0)


def wait_for_line(log: Path, pattern: str, timeout_s: float = TURN_TIMEOUT_S) -> str:
    """Waits until the serial log has a line matching `pattern`; returns it."""
    compiled = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text("utf-8", "replace") if log.exists() else ""
        found = compiled.search(text)
        if found:
            return found.group(0)
        if time.monotonic() > deadline:
            raise AssertionError(f"/{pattern}/ never appeared in the serial log")
        time.sleep(0.05)


def stop_the_disk(ctx: RunContext) -> list[str]:
    """The host's turns (see `kernel/src/block/selftests/faults.rs`)."""
    qmp = Qmp(ctx.file("qmp.sock"))
    try:
        throttle(qmp, 1)
        wait_for_line(ctx.log, r"a read timed out after \d+ ms: the device stopped answering and was reset$")
        throttle(qmp, 0)
        wait_for_line(ctx.log, r"serving again after \d+ attempt\(s\), the device recovered$")
    finally:
        qmp.close()
    return []


def _hang_scenario() -> Scenario:
    base = blk_scenario(
        "blk-fault-hang-qmp", "q35", "pci-modern",
        [BlkDrive("scratch-hang0", props=MODERN)],
        append="expect.blk.hang=scratch-hang0",
        expect_anywhere=[
            r"^selftest: PASS block: a disk that stops answering times out",
            r"block: vda: read of 8 sector\(s\) at 2048 failed: no completion after \d+ waits$",
            r"block: vda: device was reset after a failure; recovering",
            r"block: vda: serving again after \d+ attempt\(s\), the device recovered$",
        ],
    )  # fmt: skip
    disk_devices = base.devices
    assert callable(disk_devices)
    return replace(
        base,
        devices=lambda ctx: [*disk_devices(ctx), *qmp_args(ctx.file("qmp.sock"))],
        interact=stop_the_disk,
        interact_after=r"waiting for the device to stop answering$",
        timeout_s=120.0,
    )


FAULT_SCENARIOS: list[Scenario] = [FAULTS_BLKDEBUG, _hang_scenario()]
