"""QEMU scenarios for virtio-9p: a host folder at /<mount_tag> (issue 20).

Each boot shares `share/` from the work directory (`-fsdev local,...,
security_model=none`) with mount tag `host`, attaches a scratch disk and the
console, and drives the shell:

- `ls` of the root, a nested directory and a name with spaces (quoted);
- `cat` of a file whose name has spaces;
- `sha256` of a 3 MiB random file: the digest must be the host's (the
  file is read in msize pieces, so the mount's request count must show
  the read was split);
- server errors by name (`ENOENT`), a path that climbs out of the mount
  refused, a missing mount refused;
- `write` of a new file, checked on the host after the run, and `cp` of a
  file onto the scratch disk, checked in the image;
- `ls` at the end: one fid open (the root's), so nothing leaked.

The same session runs on modern PCI, legacy PCI and virtio-mmio (v1, and v2
with a packed ring).
Each boot takes well under a second under TCG.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from . import machine as qm
from .harness import DEFAULT_FORBID, Outcome, RunContext, Scenario

SHARE = "share"
TAG = "host"
BIG_BYTES = 3 * 1024 * 1024
GUEST_TEXT = "written by the guest"
CP_LBA = 8


def make_share(path: Path) -> None:
    """A `files` generator: the host folder (nested directories, spaces, a big file)."""
    if path.exists():
        shutil.rmtree(path)
    (path / "dir one" / "nested").mkdir(parents=True)
    (path / "top.txt").write_text("hello from the host\n")
    (path / "dir one" / "with space.txt").write_text("spaced out\n")
    (path / "dir one" / "nested" / "deep.txt").write_text("deep\n")
    (path / "big.bin").write_bytes(os.urandom(BIG_BYTES))


def session(ctx: RunContext) -> list[str]:
    from .console_session import Shell

    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    shell = Shell(ctx.file("console.sock"))
    try:
        # The banner and prompt go out when the shell starts; if that was
        # before we connected, they are lost: ask for a fresh prompt.
        shell.wait_prompt(timeout_s=5)
    except AssertionError:
        shell.type(b"\r", timeout_s=30)
    share = ctx.file(SHARE)

    text = shell.run("ls")
    expect(re.search(rf"^/{TAG} from .+? \(tag \"{TAG}\"\): msize \d+, fids open 1,", text, re.MULTILINE)
           is not None, f"ls (mounts): {text!r}")
    text = shell.run(f"ls /{TAG}")
    expect(all(name in text for name in ("top.txt", "dir one/", f"{BIG_BYTES} big.bin")), f"ls /{TAG}: {text!r}")
    text = shell.run(f'ls "/{TAG}/dir one"')
    expect("nested/" in text and "with space.txt" in text, f"ls of a name with a space: {text!r}")
    text = shell.run(f"ls '/{TAG}/dir one/nested'")
    expect("5 deep.txt" in text, f"ls of a nested directory: {text!r}")
    text = shell.run(f'cat "/{TAG}/dir one/with space.txt"')
    expect(text == "spaced out\n", f"cat of a name with a space: {text!r}")

    want = hashlib.sha256((share / "big.bin").read_bytes()).hexdigest()
    text = shell.run(f"sha256 /{TAG}/big.bin", timeout_s=120)
    expect(f"{want}  /{TAG}/big.bin" in text and f"({BIG_BYTES} bytes in" in text,
           f"sha256: {text!r}, the host says {want}")

    text = shell.run(f"cat /{TAG}/no-such-file")
    expect("error: ENOENT" in text, f"a missing file: {text!r}")
    text = shell.run(f"ls /{TAG}/../..")
    expect("error: path leaves the mount" in text, f"a path outside the mount: {text!r}")
    text = shell.run("cat /nowhere/file")
    expect("error: no mount /nowhere" in text, f"a missing mount: {text!r}")
    text = shell.run('cat "/host/unclosed')
    expect("error: unclosed" in text, f"an unclosed quote: {text!r}")

    text = shell.run(f'write "/{TAG}/dir one/from guest.txt" {GUEST_TEXT}')
    expect(f"wrote {len(GUEST_TEXT) + 1} bytes" in text, f"write: {text!r}")
    text = shell.run(f"write /{TAG}/top.txt replaced")
    expect("wrote 9 bytes" in text, f"write (replace): {text!r}")
    text = shell.run(f"cp /{TAG}/top.txt vda:{CP_LBA}")
    expect(f"copied 9 bytes from /{TAG}/top.txt to vda sectors {CP_LBA}..{CP_LBA + 1}" in text, f"cp: {text!r}")

    text = shell.run("ls")
    mount = re.search(r"msize (\d+), fids open (\d+), requests (\d+)", text)
    if mount is None:
        problems.append(f"ls (mounts) at the end: {text!r}")
    else:
        msize, fids, requests = (int(g) for g in mount.groups())
        expect(fids == 1, f"{fids} fids open at the end: a leak (only the root's may be)")
        expect(requests > BIG_BYTES // msize, f"{requests} requests: the big read was not split by msize {msize}")
    shell.send(b"poweroff\r")
    shell.read_until(b"powering off")
    return problems


def check_host_side(outcome: Outcome) -> Iterable[str]:
    problems = []
    assert outcome.ctx is not None
    share = outcome.ctx.file(SHARE)
    written = share / "dir one" / "from guest.txt"
    if not written.exists() or written.read_text() != GUEST_TEXT + "\n":
        problems.append(f"the host does not see the guest's file: {written.read_text() if written.exists() else None!r}")
    if (share / "top.txt").read_text() != "replaced\n":
        problems.append("top.txt was not replaced")
    with open(outcome.ctx.file("scratch.img"), "rb") as image:
        image.seek(CP_LBA * 512)
        sector = image.read(512)
    if sector != b"replaced\n" + bytes(512 - 9):
        problems.append(f"cp: sector {CP_LBA} holds {sector[:16]!r}...")
    if not re.search(rf"^virtio: 9p at .* queues=1 features=.*9P_MOUNT_TAG", outcome.log_text, re.MULTILINE):
        problems.append("no `virtio: 9p` line with 9P_MOUNT_TAG")
    return problems


def p9_shell(name: str, machine: str, transport: str, props: str = "", extra_args: tuple[str, ...] = ()) -> Scenario:
    def devices(ctx: RunContext) -> list[str]:
        args = list(extra_args)
        args += ["-fsdev", f"local,id=f0,path={ctx.file(SHARE)},security_model=none"]
        args += ["-device", f"{qm.virtio_device('virtio-9p', machine)},fsdev=f0,mount_tag={TAG}{props}"]
        args += qm.scratch_disk_args(machine, ctx.file("scratch.img"))
        args += ["-chardev", f"socket,id=con,path={ctx.file('console.sock')},server=on,wait=off"]
        args += ["-device", f"{qm.virtio_device('virtio-serial', machine)},id=vser0"]
        args += ["-device", "virtconsole,chardev=con,bus=vser0.0"]
        return args

    return Scenario(
        name=name,
        machine=machine,
        firmware=None if machine == "microvm" else "qboot",
        accel="tcg",
        devices=devices,
        files={SHARE: make_share, "scratch.img": lambda p: qm.create_raw_image(p, 1024 * 1024)},
        append="",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[r"^kernel: booting \(PVH\)",
                         rf"^virtio: 9p at .+? transport={transport} ring={'packed' if 'packed=on' in props else 'split'} ",
                         rf"^9p: /{TAG} mounted from ", r"^kernel: ready$", r"^shell: poweroff$"],
        forbid=[*DEFAULT_FORBID, r"^virtio: .* FAILED: ", r"mount failed"],
        timeout_s=120.0,
        interact=session,
        check=check_host_side,
    )


P9_SCENARIOS: list[Scenario] = [
    p9_shell("9p-q35-pci-modern", "q35", "pci-modern", ",disable-legacy=on"),
    p9_shell("9p-pc-pci-legacy", "pc", "pci-legacy", ",disable-modern=on"),
    p9_shell("9p-microvm-mmio-v1", "microvm", "mmio-v1", extra_args=("-M", "acpi=off")),
    # virtio-mmio v2 with a packed ring (the driver only knows `Ring`).
    p9_shell("9p-microvm-mmio-v2-packed", "microvm", "mmio-v2", ",packed=on",
             extra_args=("-M", "acpi=off", "-global", "virtio-mmio.force-legacy=false")),
]
