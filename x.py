#!/usr/bin/env python3
"""x.py: the one entry point for building, booting and testing the kernel.

    ./x.py run          build the kernel and boot it in QEMU (q35 + qboot + KVM)
    ./x.py test         formatting, lints, host tests, kernel builds, QEMU scenarios
    ./x.py qemu-cmd     print the QEMU command line `run` would use
    ./x.py build        build the kernel ELF (with the self-tests) and print its path
    ./x.py setup        install what is missing (QEMU, the Rust target)
    ./x.py bench        benchmarks (accelerator as `run` picks it): tables, build/bench/
    ./x.py docs         build the book (docs/) into build/book/ with mdBook
    ./x.py fuzz         the cargo-fuzz targets of fuzz/ (nightly, libFuzzer), one after another

The kernel has three builds (tests/qemu/kernel_builds.py), each copied to a
path of its own under build/: the production kernel `run` boots
(build/kernel.elf, no cargo feature), the self-test build `build` prints and
`test` boots (build/kernel-selftest.elf, feature `selftest`), and the
benchmark build `bench` boots (build/kernel-bench-release.elf, feature
`bench`, which links the peer stack). `run --append "mode=selftest"` boots the
self-test build and says so.

Python 3.11 standard library only. The QEMU scenarios live in tests/qemu/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent
BUILD_DIR = REPO / "build"
KERNEL_TARGET = "x86_64-unknown-none"

sys.path.insert(0, str(REPO / "tests"))
from qemu import bench_compare, bench_cost, bench_echo, bench_net_host, bench_results  # noqa: E402  (needs the path above)
from qemu import bench_iommu, bench_scale, browser, display, harness, kernel_builds, queue_view, scenarios  # noqa: E402
from qemu import machine as qm  # noqa: E402
from qemu import scenarios_net_mq  # noqa: E402
from qemu import soak  # noqa: E402
from qemu import fuzz  # noqa: E402
from book import bench_page, mdbook, traces  # noqa: E402

#: The interactive boot's scratch disk (created on first use).
SCRATCH_IMAGE = BUILD_DIR / "scratch.img"
SCRATCH_SIZE = 64 * 1024 * 1024
#: Host ports forwarded into the guest by `run`: (host, guest, what).
RUN_HOSTFWD = [(5555, 7, "echo"), (8080, 80, "http")]

EXIT_MEANINGS = {
    qm.EXIT_SELFTEST_PASS: "self-test passed",
    qm.EXIT_SELFTEST_FAIL: "self-test failed",
    qm.EXIT_PANIC: "kernel panic",
    qm.EXIT_EXCEPTION: "CPU exception",
    qm.EXIT_POWEROFF: "powered off from the shell",
    0: "QEMU quit",
}


class XError(Exception):
    """A failure to report in one line, without a traceback."""


def say(message: str) -> None:
    print(f"x.py: {message}", flush=True)


def run_cmd(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=kwargs.pop("cwd", REPO), **kwargs)


# ---------------------------------------------------------------- setup


def setup() -> None:
    """Install what a fresh machine lacks; silent when everything is there."""
    if shutil.which(qm.QEMU) is None:
        install_qemu()
    if shutil.which("qemu-img") is None:
        # The crash-* scenarios keep their disk in qcow2, whose cluster
        # mappings QEMU holds in memory until a FLUSH (tests/qemu/scenarios_crash.py).
        install_package("qemu-utils", "qemu-img", "qemu-img (qemu-utils)")
    if shutil.which("cargo") is None:
        raise XError("cargo is not installed: install Rust with rustup (https://rustup.rs) first")
    ensure_rust_target()


def install_qemu() -> None:
    install_package("qemu-system-x86", qm.QEMU, "QEMU (qemu-system-x86_64 >= 7.2)")


def install_package(package: str, program: str, what: str) -> None:
    """`apt-get install -y <package>` (with sudo when not root), saying so."""
    say(f"{program} not found: installing the {package} package")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise XError(f"installing {package} needs root, and sudo is not available: "
                         f"run `apt-get install {package}` as root")
        prefix = ["sudo"]
    if shutil.which("apt-get") is None:
        raise XError(f"apt-get not found: install {what} with your package manager")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        say("running " + shlex.join(prefix + step))
        if run_cmd(prefix + step, env=env).returncode != 0:
            raise XError(f"`{shlex.join(prefix + step)}` failed")
    if shutil.which(program) is None:
        raise XError(f"{package} was installed but {program} is still not on PATH")


def ensure_chromium() -> str:
    """Debian's headless-capable Chromium, for the browser scenario of the
    live queue view (tests/qemu/queue_view.py); installed with apt-get when
    missing, saying so."""
    path = browser.find_chromium()
    if path is None:
        install_package(browser.CHROMIUM_PACKAGE, browser.CHROMIUM_PROGRAMS[0], "Chromium (headless browser)")
        path = browser.find_chromium()
    if path is None:
        raise XError("chromium is still not on PATH after installing it")
    return path


def ensure_nm() -> str:
    """binutils' `nm`, for the production-ELF check of `x.py test`."""
    if shutil.which("nm") is None:
        install_package("binutils", "nm", "binutils (nm)")
    return "nm"


def ensure_rust_target() -> None:
    if shutil.which("rustup") is None:
        return  # a toolchain without rustup: cargo will say if the target is missing
    # Run in the repository so that rust-toolchain.toml picks the toolchain.
    listed = run_cmd(["rustup", "target", "list", "--installed"], capture_output=True, text=True)
    if listed.returncode == 0 and KERNEL_TARGET in listed.stdout.split():
        return
    say(f"adding the Rust target {KERNEL_TARGET}")
    if run_cmd(["rustup", "target", "add", KERNEL_TARGET]).returncode != 0:
        raise XError(f"`rustup target add {KERNEL_TARGET}` failed")


# ---------------------------------------------------------------- build


def build_kernel(release: bool = False, features: Sequence[str] = ()) -> Path:
    """`cargo build -p kernel --target x86_64-unknown-none [--features ...]`.

    The features change the binary cargo writes to one path, so the ELF is
    copied to a path of its own (`kernel_builds.elf_name`: build/kernel.elf,
    build/kernel-selftest.elf, ...), which is returned.
    """
    features = kernel_builds.normalize(features)
    args = ["cargo", "build", "-p", "kernel", "--target", KERNEL_TARGET,
            "--message-format=json-render-diagnostics"]
    if release:
        args.append("--release")
    if features:
        args += ["--features", ",".join(features)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    elf = None
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") == "compiler-artifact" and message.get("target", {}).get("name") == "kernel":
            elf = message.get("executable") or elf
    if proc.wait() != 0:
        raise XError("the kernel did not build (cargo's messages are above)")
    if elf is None:
        raise XError("cargo built the kernel but reported no executable")
    copy = expected_kernel_path(release, features)
    copy.parent.mkdir(parents=True, exist_ok=True)
    # Copy, then rename: a QEMU still running the previous copy keeps its file.
    partial = copy.with_name(copy.name + ".partial")
    shutil.copyfile(elf, partial)
    os.replace(partial, copy)
    return copy


def expected_kernel_path(release: bool, features: Sequence[str] = ()) -> Path:
    """Where `build_kernel` puts the ELF of that build, without building it."""
    return BUILD_DIR / kernel_builds.elf_name(features, release)


def shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def parse_features(text: str) -> tuple[str, ...]:
    """`--features selftest,bench` (or `none`) -> a normalized tuple."""
    words = [] if text.strip() in ("", "none") else text.replace(",", " ").split()
    try:
        return kernel_builds.normalize(words)
    except ValueError as err:
        raise XError(str(err)) from err


def cmd_build(options: argparse.Namespace) -> int:
    features = parse_features(options.features)
    setup()
    kernel = build_kernel(options.release, features)
    # stdout is the path alone (stable contract); the rest goes to stderr.
    print(f"x.py: built {kernel_builds.describe(features)}"
          + ("" if features else ", what `./x.py run` boots"), file=sys.stderr)
    print(kernel)
    return 0


def features_for_boot(options: argparse.Namespace) -> tuple[str, ...]:
    """The build `run`/`qemu-cmd` boot: the production kernel, unless the
    command line asks for a mode only a feature build has."""
    return kernel_builds.features_for_append(options.append)


# ---------------------------------------------------------------- run


@dataclass
class RunPlan:
    command: list[str]
    accel: qm.AccelChoice
    machine: str
    firmware: str | None
    #: What `--display` says about where the screen is.
    messages: list[str] = field(default_factory=list)


def check_boot_options(options: argparse.Namespace) -> None:
    """Reject impossible combinations before anything is built."""
    if options.machine == "microvm" and options.firmware not in (None, "qboot"):
        raise XError("microvm always boots with its own qboot: --firmware is for pc and q35")


def plan_run(options: argparse.Namespace, kernel: Path) -> RunPlan:
    """The interactive boot: serial log, monitor and virtio console on one terminal.

    One `stdio` chardev multiplexed (`mux=on`) between the serial port (the
    kernel's log), the QEMU monitor and the virtio console: the terminal shows
    all their output. The keyboard starts with the frontend attached last, the
    virtio console (checked on QEMU 7.2); Ctrl-A C cycles it to the monitor,
    then the serial port, then back. Ctrl-A X quits.
    """
    check_boot_options(options)
    machine = options.machine
    firmware = options.firmware or qm.default_firmware(machine)
    accel = qm.choose_accel(options.accel)
    command = qm.base_args(kernel, machine, firmware, accel, append=options.append)
    command += ["-chardev", "stdio,mux=on,id=term",
                "-serial", "chardev:term",
                "-mon", "chardev=term,mode=readline"]
    command += qm.scratch_disk_args(machine, SCRATCH_IMAGE)
    command += qm.user_net_args(machine, [(host, guest) for host, guest, _ in RUN_HOSTFWD])
    command += qm.console_args(machine, "term")
    messages: list[str] = []
    if getattr(options, "display", False):
        screen = display.plan(machine, BUILD_DIR / "run-qmp.sock")
        command += screen.args
        messages = screen.messages
    command += options.qemu_args
    return RunPlan(command, accel, machine, firmware, messages)


def describe_accel(accel: qm.AccelChoice) -> str:
    if accel.name == "kvm":
        return "KVM (/dev/kvm is usable)"
    if accel.fell_back:
        return f"TCG, because {accel.reason}"
    return "TCG (asked for)"


def cmd_run(options: argparse.Namespace) -> int:
    check_boot_options(options)
    busy = [host for host, _, _ in RUN_HOSTFWD if not qm.port_is_free(host)]
    if busy:
        raise XError(f"host port(s) {', '.join(map(str, busy))} are in use (another `x.py run`?); "
                     "free them first")
    setup()
    features = features_for_boot(options)
    if features:
        say(f"--append {options.append!r} asks for what the production kernel does not have: "
            f"building with the cargo feature(s) {', '.join(features)}")
    kernel = build_kernel(options.release, features)
    qm.create_raw_image(SCRATCH_IMAGE, SCRATCH_SIZE)
    plan = plan_run(options, kernel)
    say(f"booting {shown(kernel)} ({kernel_builds.describe(features)})")
    say(f"machine {plan.machine}, firmware {plan.firmware or 'qboot (microvm built-in)'}, "
        f"accelerator {describe_accel(plan.accel)}")
    say(f"scratch disk: {SCRATCH_IMAGE.relative_to(REPO)} (virtio-blk, serial=scratch0)")
    for host, guest, what in RUN_HOSTFWD:
        say(f"forwarded: 127.0.0.1:{host} -> guest port {guest} ({what})")
    say("quit with Ctrl-A X. Typing goes to the virtio console; Ctrl-A C moves the keyboard "
        "to the QEMU monitor, then the serial port, then back; Ctrl-A H lists the keys")
    for message in plan.messages:
        say(message)
    print(flush=True)
    proc = subprocess.Popen(plan.command, cwd=REPO)
    # The terminal's Ctrl-C reaches QEMU directly (same process group); x.py
    # only waits and reports.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        status = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    meaning = EXIT_MEANINGS.get(status, "see the log above")
    say(f"QEMU exited with status {status} ({meaning})")
    return 0 if status in (qm.EXIT_SELFTEST_PASS, qm.EXIT_POWEROFF) else status


def cmd_qemu_cmd(options: argparse.Namespace) -> int:
    features = features_for_boot(options)
    kernel = expected_kernel_path(options.release, features)
    if not kernel.exists():
        build = "./x.py build" + (" --release" if options.release else "") \
            + f" --features {','.join(features) or 'none'}"
        print(f"# note: {shown(kernel)} does not exist yet: run {build}", file=sys.stderr)
    qm.create_raw_image(SCRATCH_IMAGE, SCRATCH_SIZE)
    plan = plan_run(options, kernel)
    print(shlex.join(plan.command))
    return 0


# ---------------------------------------------------------------- test


@dataclass
class StepResult:
    """One row of the summary table."""

    name: str
    result: str  # PASS, FAIL or SKIP
    seconds: float
    boot: str = ""  # machine/firmware/accelerator of a QEMU scenario
    first_line: str = ""
    selftest_done: str = ""
    note: str = ""


def run_step(name: str, args: list[str], cwd: Path = REPO) -> StepResult:
    """A non-QEMU step: its output goes straight to the terminal (and CI's log)."""
    print(f"\n==> {name}: {shlex.join(args)}", flush=True)
    start = time.monotonic()
    status = run_cmd(args, cwd=cwd).returncode
    seconds = time.monotonic() - start
    if status == 0:
        return StepResult(name, "PASS", seconds)
    return StepResult(name, "FAIL", seconds, note=f"exit status {status} (output above)")


def scenario_row(outcome: harness.Outcome) -> StepResult:
    return StepResult(
        outcome.scenario.name,
        "SKIP" if outcome.skipped else "PASS" if outcome.passed else "FAIL",
        outcome.wall_s,
        boot=outcome.scenario.label(outcome.accel),
        first_line=harness.fmt_seconds(outcome.first_line_s),
        selftest_done=harness.fmt_seconds(outcome.selftest_done_s),
        note=outcome.note if outcome.passed else shorten("; ".join(outcome.problems), 110),
    )


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def print_summary(results: list[StepResult]) -> None:
    headers = ("step / scenario", "boot", "result", "time", "first line", "selftest done", "note")
    rows = [(r.name, r.boot, r.result, f"{r.seconds:.2f}s", r.first_line, r.selftest_done, r.note)
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def check_production_symbols(kernel: Path) -> StepResult:
    """`nm-production`: the ELF `run` boots must not contain the peer stack,
    the benchmarks or the self-tests (`kernel_builds.FORBIDDEN_IN_PRODUCTION`)."""
    print(f"\n==> nm-production: nm -C {shown(kernel)}", flush=True)
    start = time.monotonic()
    try:
        problems = kernel_builds.forbidden_symbols(kernel_builds.nm_listing(str(kernel), ensure_nm()))
    except (RuntimeError, XError) as err:
        problems = [str(err)]
    seconds = time.monotonic() - start
    if problems:
        for problem in problems:
            print(f"  {problem}")
        return StepResult("nm-production", "FAIL", seconds,
                          note=shorten("test or bench code in the production kernel: " + "; ".join(problems), 110))
    print("  no virtio_drivers, zerocopy, peer, bench or selftest symbols")
    return StepResult("nm-production", "PASS", seconds, note=f"{shown(kernel)}: no test or bench code")


def cmd_test(options: argparse.Namespace) -> int:
    started = time.monotonic()
    setup()

    def selected(name: str) -> bool:
        return options.filter is None or options.filter in name

    clippy_kernel = ["cargo", "clippy", "-p", "kernel", "--target", KERNEL_TARGET]
    steps = [
        ("fmt", ["cargo", "fmt", "--all", "--", "--check"], REPO),
        ("clippy-host", ["cargo", "clippy", "--all-targets", "--", "-D", "warnings"], REPO),
        # Every kernel build that ships: production (what `run` boots), the
        # self-test build (`build`, `test`) and the benchmark build (`bench`).
        ("clippy-kernel", [*clippy_kernel, "--", "-D", "warnings"], REPO),
        ("clippy-kernel-selftest", [*clippy_kernel, "--features", "selftest", "--", "-D", "warnings"], REPO),
        ("clippy-kernel-bench", [*clippy_kernel, "--features", "bench", "--", "-D", "warnings"], REPO),
        # Both at once (`--append "mode=bench fail=..."` asks for it): every
        # test-only item is behind the exact feature that uses it, so the
        # union must build clean too.
        ("clippy-kernel-all", [*clippy_kernel, "--features", "selftest,bench", "--", "-D", "warnings"], REPO),
        ("cargo-test", ["cargo", "test"], REPO),
        # The harness's own unit tests import the `qemu` package from tests/.
        ("harness-unit", [sys.executable, "-m", "unittest", "-q", "qemu.test_harness", "qemu.test_blk", "qemu.test_net",
                          "qemu.test_bench_compare", "qemu.test_bench_cost", "qemu.test_kernel_builds",
                          "qemu.test_screen", "qemu.test_queue_view", "qemu.test_qmp",
                          "qemu.test_net_stress", "qemu.test_soak", "qemu.test_bench_iommu", "qemu.test_bench_scale",
                          "qemu.test_fuzz", "qemu.test_crash", "qemu.test_net_mq"],
         REPO / "tests"),
        # The book and README: every path, symbol, link and include they name exists.
        ("docs-check", [sys.executable, "tests/book/check.py"], REPO),
        ("docs-unit", [sys.executable, "-m", "unittest", "-q", "book.test_check", "book.test_traces",
                       "book.test_bench_page"], REPO / "tests"),
        # The API docs of the crates a reader opens first build without warnings (broken links).
        ("docs-rustdoc", ["env", "RUSTDOCFLAGS=-D warnings", "cargo", "doc", "--no-deps", "-p", "hal",
                          "-p", "drivers"], REPO),
    ]
    # The book's trace excerpts are checked against a real boot like any other scenario.
    chosen = [s for s in [*scenarios.SCENARIOS, traces.scenario()] if selected(s.name)]
    # Every build that ships is a step (`build-kernel`, `build-kernel-selftest`,
    # `build-kernel-bench`); it runs when selected or when a chosen scenario
    # boots it. The production build also runs for the symbol check.
    builds = [(), *((feature,) for feature in kernel_builds.FEATURES)]
    builds += sorted({harness.kernel_features(s) for s in chosen} - set(builds))
    build_names = {features: "build-kernel" + "".join(f"-{f}" for f in features) for features in builds}
    needed = {harness.kernel_features(s) for s in chosen}
    nm_wanted = selected("nm-production") or bool(chosen)
    wanted_builds = [f for f in builds if f in needed or selected(build_names[f]) or (f == () and nm_wanted)]
    build_wanted = bool(wanted_builds)
    if not build_wanted and not any(selected(name) for name, _, _ in steps):
        raise XError(f"--filter {options.filter!r} matches no step or scenario")

    results = [run_step(name, args, cwd) for name, args, cwd in steps if selected(name)]
    failed: list[harness.Outcome] = []
    if build_wanted:
        kernels: dict[tuple[str, ...], Path] = {}
        for features in wanted_builds:
            name = build_names[features]
            print(f"\n==> {name} ({kernel_builds.describe(features)})", flush=True)
            start = time.monotonic()
            try:
                kernels[features] = build_kernel(features=features)
            except XError as err:
                results.append(StepResult(name, "FAIL", time.monotonic() - start, note=str(err)))
            else:
                results.append(StepResult(name, "PASS", time.monotonic() - start, note=shown(kernels[features])))
        if () in kernels and nm_wanted:
            results.append(check_production_symbols(kernels[()]))
        runnable = [s for s in chosen if harness.kernel_features(s) in kernels]
        if any(s.name in queue_view.BROWSER_SCENARIOS for s in runnable):
            try:
                ensure_chromium()
            except XError as err:  # the browser scenario then fails, saying why
                say(f"could not install Chromium: {err}")
        results += [StepResult(s.name, "SKIP", 0.0, note=f"{build_names[harness.kernel_features(s)]} failed")
                    for s in chosen if s not in runnable]
        if runnable:
            print(f"\n==> QEMU scenarios: {len(runnable)}, {options.jobs} at a time, serial logs in "
                  f"{(BUILD_DIR / 'qemu-logs').relative_to(REPO)}/", flush=True)
            outcomes = harness.run_scenarios(runnable, kernels, BUILD_DIR, jobs=options.jobs,
                                             tcg_only=options.tcg_only)
            results += [scenario_row(outcome) for outcome in outcomes]
            failed = [outcome for outcome in outcomes if not outcome.passed]

    for outcome in failed:
        print("\n" + harness.failure_report(outcome), flush=True)
    print_summary(results)
    prefix = "TCG instead of KVM: "
    fell_back = [r.note.removeprefix(prefix) for r in results if r.note.startswith(prefix)]
    for reason in sorted(set(fell_back)):
        print(f"\nnote: {fell_back.count(reason)} scenario(s) meant for KVM ran under TCG: {reason}")
    failures = [r for r in results if r.result == "FAIL"]
    skipped = [r for r in results if r.result == "SKIP"]
    total = time.monotonic() - started
    if failures:
        print(f"\nFAILED: {len(failures)} failed, {len(skipped)} skipped, "
              f"{len(results) - len(failures) - len(skipped)} passed (total {total:.1f}s)")
        return 1
    print(f"\nPASSED: all {len(results)} passed (total {total:.1f}s)")
    return 0


# ---------------------------------------------------------------- bench
#
# `x.py bench` boots the kernel in `mode=bench` once per section (on the
# accelerator `x.py run` would pick: `qm.choose_accel("auto")`),
# with the devices that section measures, and reads back the `bench:` lines
# the kernel prints (kernel/src/bench.rs):
#
#     bench: <section>.<workload>[.<mode>] key=value key=value ...
#     bench: done                      (or: bench: error <section>: <why>)
#
# Each section is a `BenchSection` in `BENCH_SECTIONS`: its devices, extra
# kernel words and the columns of its table. Results go to the terminal as
# a table and to build/bench/<section>.json. Rows carry a `driver` field
# ("ours") so that a comparison with another driver stack (virtio-drivers)
# can add its own rows for the same workloads. Nothing is judged: numbers
# are reported, never asserted.

BENCH_DIR = BUILD_DIR / "bench"


@dataclass
class BenchSection:
    """One benchmark section: what to attach and how to show the results."""

    name: str
    description: str
    #: QEMU devices (the harness's `RunContext` gives paths and ports).
    devices: Callable[[harness.RunContext], list[str]]
    #: Extra kernel command-line words.
    append: str = ""
    #: (key in the `bench:` line, column header, format) for the table.
    columns: Sequence[tuple[str, str, str]] = ()
    machine: str = "q35"
    timeout_s: float = 180.0
    #: The kernel's `bench=` sections (default: `name`). `compare` alternates
    #: the block workloads on our stack and on virtio-drivers, in one boot.
    kernel_sections: str = ""
    #: A command QEMU runs under (`harness.Scenario.wrap`), e.g. a network namespace.
    wrap: Callable[[harness.RunContext], list[str]] | None = None


def blk_bench_devices(ctx: harness.RunContext) -> list[str]:
    """A 1 GiB null-co disk (no host I/O at all: pure virtio overhead),
    modern virtio-pci, serial `scratch-null0` so the write workload may run."""
    return [
        "-drive", "if=none,id=bench0,driver=null-co,size=1073741824",
        "-device", "virtio-blk-pci,drive=bench0,serial=scratch-null0,disable-legacy=on",
    ]  # fmt: skip


BENCH_SECTIONS: dict[str, BenchSection] = {
    "blk": BenchSection(
        name="blk",
        description="virtio-blk on a null-co drive: 4 KiB random reads at queue depth 1 and 32, "
                    "128 KiB sequential reads and writes (depth 8); interrupt-driven and polling",
        devices=blk_bench_devices,
        kernel_sections="compare",
        columns=[
            ("iops", "IOPS", "{:.0f}"),
            ("mib_per_s", "MiB/s", "{:.1f}"),
            ("notifications_per_req", "notify/req", "{:.3f}"),
            ("interrupts_per_req", "irq/req", "{:.3f}"),
            ("halts_per_req", "halts/req", "{:.3f}"),
            ("requests", "requests", "{:.0f}"),
        ],
    ),
    # Two cards on one QEMU hub (pc: q35 with qboot never starts with a hubport NIC).
    "net": BenchSection(
        name="net",
        description="virtio-net, 64-byte frames from net0 to net1 through one QEMU hub, batches of 32 "
                    "per flush, polled: transmit and receive packets per second, loss, notify and irq per "
                    "packet; each round ours, then virtio-drivers' VirtIONetRaw on the same two cards "
                    "(net.pps.peer)",
        devices=lambda ctx: [
            "-netdev", "hubport,id=h0,hubid=0", "-netdev", "hubport,id=h1,hubid=0",
            "-device", "virtio-net-pci,netdev=h0,mac=52:54:00:00:00:21,disable-legacy=on,romfile=",
            "-device", "virtio-net-pci,netdev=h1,mac=52:54:00:00:00:22,disable-legacy=on,romfile=",
        ],
        machine="pc",
        columns=[
            ("tx_pps", "tx pps", "{:.0f}"),
            ("rx_pps", "rx pps", "{:.0f}"),
            ("loss_pct", "loss %", "{:.3f}"),
            ("tx_notifications_per_pkt", "tx notify/pkt", "{:.4f}"),
            ("rx_notifications_per_pkt", "rx notify/pkt", "{:.4f}"),
            ("tx_interrupts_per_pkt", "tx irq/pkt", "{:.4f}"),
            ("rx_interrupts_per_pkt", "rx irq/pkt", "{:.4f}"),
            ("sent", "sent", "{:.0f}"),
        ],
    ),
}


def print_bench_table(section: BenchSection, rows: Sequence[dict[str, object]]) -> None:
    headers = ["workload", "mode", *(header for _, header, _ in section.columns)]
    table = []
    for row in rows:
        cells = [str(row["workload"]), str(row["mode"])]
        for key, _, fmt in section.columns:
            value = row.get(key)
            cells.append(fmt.format(value) if isinstance(value, (int, float)) else "-")
        table.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for cells in table:
        print("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip())


def run_bench_section(section: BenchSection, kernel: Path, options: argparse.Namespace) -> dict[str, object]:
    """Boots the kernel for one section; returns the JSON record (raises XError on failure)."""
    words = ["mode=bench", f"bench={section.kernel_sections or section.name}",
             f"bench.seconds={options.seconds:g}", f"bench.repeat={options.repeat}"]
    if section.append:
        words.append(section.append)
    scenario = harness.Scenario(
        name=f"bench-{section.name}",
        machine=section.machine,
        firmware=options.firmware or qm.default_firmware(section.machine),
        accel=options.accel,
        devices=section.devices,
        wrap=section.wrap,
        append=" ".join(words),
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=[r"^bench: done$"],
        timeout_s=section.timeout_s + 20 * options.seconds * options.repeat,
    )
    say(f"{section.name}: {section.description}")
    with bench_progress(section.name):
        outcome = harness.run_scenario(scenario, kernel, BUILD_DIR)
    setups, rows, errors, done = bench_compare.parse_bench_lines(outcome.log_text)
    if errors or not done or not outcome.passed:
        print(harness.failure_report(outcome), flush=True)
        raise XError(f"benchmark section {section.name} failed: "
                     + "; ".join(errors or outcome.problems or ["no `bench: done`"]))
    if outcome.accel.name != "kvm":
        say(f"note: ran under TCG ({outcome.accel.reason}): compare only with runs on the same accelerator")
    print()
    print_bench_table(section, median_rows(rows))
    print()
    return {
        "section": section.name,
        "description": section.description,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "accel": outcome.accel.name,
        "machine": section.machine,
        "seconds_per_workload": options.seconds,
        "runs_per_workload": options.repeat,
        "kernel": str(kernel),
        "qemu": outcome.command,
        "setup": setups,
        "results": rows,
        "serial_log": str(outcome.log_path),
    }


# --- split vs packed ---------------------------------------------------------
# `ring` boots the `blk` workloads of our stack twice on a device that offers
# VIRTIO_F_RING_PACKED, once with `virtio.ring=split` and once with
# `virtio.ring=packed`, and checks the `virtio: blk ... ring=` line of each
# serial log so that a silent fall-back cannot pass for a packed result.

RING_LAYOUTS = ("split", "packed")
RING_LINE = re.compile(r"^virtio: blk at \S+ \S+ transport=\S+ ring=(\w+)", re.MULTILINE)


def ring_bench_devices(ctx: harness.RunContext) -> list[str]:
    """`blk_bench_devices`, with the packed ring offered (`packed=on`)."""
    return [
        "-drive", "if=none,id=bench0,driver=null-co,size=1073741824",
        "-device", "virtio-blk-pci,drive=bench0,serial=scratch-null0,disable-legacy=on,packed=on",
    ]  # fmt: skip


def rings_in_log(log: str) -> list[str]:
    """The `ring=` of every `virtio: blk at ...` line in a serial log."""
    return RING_LINE.findall(log)


def ring_rows(split: Sequence[dict[str, object]], packed: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per workload and mode: the median figure of merit on each layout, their
    ratio (packed / split), and notifications and interrupts per request."""
    def medians(rows: Sequence[dict[str, object]]) -> dict[str, dict[str, object]]:
        return {str(r["name"]): r for r in median_rows([r for r in rows if r.get("mode") in ("irq", "poll")])}

    by_split, by_packed = medians(split), medians(packed)
    table = []
    for name, s in by_split.items():
        p = by_packed.get(name)
        if p is None:
            continue
        unit = "iops" if isinstance(s.get("iops"), (int, float)) and float(s["iops"]) > 0 else "mib_per_s"  # type: ignore[arg-type]
        sv, pv = float(s.get(unit, 0) or 0), float(p.get(unit, 0) or 0)  # type: ignore[arg-type]
        table.append({
            "workload": s["workload"], "mode": s["mode"], "unit": "IOPS" if unit == "iops" else "MiB/s",
            "split": sv, "packed": pv, "ratio": pv / sv if sv else None,
            "split_notify_per_req": s.get("notifications_per_req"),
            "packed_notify_per_req": p.get("notifications_per_req"),
            "split_irq_per_req": s.get("interrupts_per_req"),
            "packed_irq_per_req": p.get("interrupts_per_req"),
        })
    return table


def ring_table_lines(table: Sequence[dict[str, object]]) -> list[str]:
    """A Markdown table of `ring_rows` (fits a terminal and the README)."""
    def num(value: object, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    lines = ["| workload | mode | unit | split | packed | packed/split | notify/req split | notify/req packed "
             "| irq/req split | irq/req packed |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in table:
        lines.append(
            f"| {r['workload']} | {r['mode']} | {r['unit']} | {num(r['split'], '{:.1f}')} | "
            f"{num(r['packed'], '{:.1f}')} | {num(r['ratio'], '{:.2f}')} | "
            f"{num(r['split_notify_per_req'], '{:.3f}')} | {num(r['packed_notify_per_req'], '{:.3f}')} | "
            f"{num(r['split_irq_per_req'], '{:.3f}')} | {num(r['packed_irq_per_req'], '{:.3f}')} |")
    return lines


def run_ring_bench(kernel: Path, options: argparse.Namespace) -> dict[str, object]:
    """Two boots of the `blk` workloads (ours), split then packed ring."""
    per_layout: dict[str, dict[str, object]] = {}
    for layout in RING_LAYOUTS:
        section = BenchSection(
            name=f"ring-{layout}",
            description=f"virtio-blk null-co, our stack, virtio.ring={layout} (packed offered)",
            devices=ring_bench_devices, append=f"virtio.ring={layout}", kernel_sections="blk",
            columns=BENCH_SECTIONS["blk"].columns,
        )
        record = run_bench_section(section, kernel, options)
        used = rings_in_log(Path(str(record["serial_log"])).read_text(errors="replace"))
        if not used or any(ring != layout for ring in used):
            raise XError(f"ring: the boot with virtio.ring={layout} brought blk up with ring={used or 'nothing'}")
        record["ring_used"] = used
        per_layout[layout] = record
    table = ring_rows(per_layout["split"]["results"], per_layout["packed"]["results"])  # type: ignore[arg-type]
    print(f"Split vs packed, our stack (median of {options.repeat} runs x {options.seconds:g}s):")
    for line in ring_table_lines(table):
        print(line)
    print()
    return {"section": "ring", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "accel": per_layout["split"]["accel"], "ring": table, "results": [],
            "boots": per_layout}


# --- console -----------------------------------------------------------------
# `console` writes `bench.console_mib=` MiB per run through virtio-console
# port 0 into a `-chardev file`, and the host checks that the file holds
# exactly what the guest says it wrote (size and FNV-1a).

CONSOLE_OUT = "console.out"


def console_bench_devices(ctx: harness.RunContext) -> list[str]:
    return [
        "-device", "virtio-serial-pci,disable-legacy=on",
        "-chardev", f"file,id=benchcon,path={ctx.file(CONSOLE_OUT)}",
        "-device", "virtconsole,chardev=benchcon",
    ]  # fmt: skip


def run_console_bench(kernel: Path, options: argparse.Namespace) -> dict[str, object]:
    """One boot: MB/s of our console's transmit path and of virtio-drivers'
    VirtIOConsole on the same device, in turn, and every byte checked."""
    section = BenchSection(
        name="console", description="virtio-console port 0 into a -chardev file; each round ours "
                                    "(MULTIPORT), then virtio-drivers' VirtIOConsole (port 0 without "
                                    "MULTIPORT) on the same device and file",
        devices=console_bench_devices, append=f"bench.console_mib={options.console_mib}",
        columns=[("mb_per_s", "MB/s", "{:.2f}"), ("bytes", "bytes", "{:.0f}"), ("elapsed_us", "us", "{:.0f}"),
                 ("notifications_per_chunk", "notify/chunk", "{:.3f}")],
    )
    record = run_bench_section(section, kernel, options)
    rows = record["results"]
    out = BUILD_DIR / "qemu-work" / "bench-console" / CONSOLE_OUT
    data = out.read_bytes() if out.exists() else b""
    problems = bench_compare.check_console_file(data, rows)  # type: ignore[arg-type]
    if problems:
        raise XError(f"console: {out}: " + "; ".join(problems))
    host_sum = f"0x{bench_compare.fnv1a64(data):016x}"
    speeds: dict[str, dict[str, float] | None] = {}
    for stack, name in (("ours", "console.write"), ("peer", "console.write.peer")):
        values = sorted(float(r["mb_per_s"]) for r in rows if r["name"] == name)  # type: ignore[union-attr, index, arg-type]
        speeds[stack] = {"runs": len(values), "median_mb_per_s": values[(len(values) - 1) // 2],
                         "min_mb_per_s": values[0], "max_mb_per_s": values[-1]} if values else None
    summary = "; ".join(
        f"{label} median {s['median_mb_per_s']:.2f} MB/s [{s['min_mb_per_s']:.2f}-{s['max_mb_per_s']:.2f}]"
        for label, s in (("ours", speeds["ours"]), ("virtio-drivers", speeds["peer"])) if s)
    print(f"console: {options.repeat} round(s) x {options.console_mib} MiB per stack; {summary}; "
          f"host file {len(data)} bytes, FNV-1a {host_sum} matches both stacks' bytes")
    print()
    record["console"] = {"mib_per_run": options.console_mib, "ours": speeds["ours"], "peer": speeds["peer"],
                         "file_bytes": len(data), "fnv1a": host_sum, "checked": True}
    return record


def run_iommu_bench(kernel: Path, options: argparse.Namespace) -> dict[str, object]:
    """Two boots back to back, strict IOMMU and none (tests/qemu/bench_iommu.py)."""
    boots: dict[str, dict[str, object]] = {}
    for label, with_iommu in bench_iommu.BOOTS:
        section = BenchSection(
            name=f"iommu-{label}", kernel_sections="iommu", devices=bench_iommu.devices(with_iommu),
            description=f"virtio-blk null-co behind {'intel-iommu, strict' if with_iommu else 'no IOMMU'}",
            columns=[("iops", "IOPS", "{:.0f}"), ("ns_per_pair", "ns/pair", "{:.0f}"),
                     ("pages_mapped_per_req", "pages/req", "{:.2f}"),
                     ("invalidations_per_req", "inval/req", "{:.2f}")],
        )
        boots[label] = run_bench_section(section, kernel, options)
    table = bench_iommu.side_by_side(median_rows(boots["strict"]["results"]),  # type: ignore[arg-type]
                                     median_rows(boots["none"]["results"]))  # type: ignore[arg-type]
    print(f"Strict IOMMU vs none, our stack (median of {options.repeat} runs x {options.seconds:g}s):")
    for line in bench_iommu.table_lines(table):
        print(line)
    print()
    return {"section": "iommu", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "accel": boots["strict"]["accel"], "iommu": table, "results": [], "boots": boots}


def run_scale_bench(kernel: Path, options: argparse.Namespace) -> dict[str, object]:
    """One boot per CPU count, `-smp N` and `num-queues=N` (tests/qemu/bench_scale.py)."""
    entries = []
    boots: dict[str, dict[str, object]] = {}
    for cpus in bench_scale.CPU_COUNTS:
        section = BenchSection(
            name=f"scale-{cpus}cpu", kernel_sections="scale", devices=bench_scale.devices(cpus),
            description=f"{bench_scale.WORKLOAD} with {cpus} vCPU(s), a null-co disk of num-queues={cpus}",
            columns=[("iops", "IOPS", "{:.0f}"), ("interrupts_per_req", "irq/req", "{:.3f}"),
                     ("notifications_per_req", "notify/req", "{:.3f}")],
        )
        record = run_bench_section(section, kernel, options)
        boots[str(cpus)] = record
        setup = dict(record["setup"]).get("scale.setup", {})  # type: ignore[call-overload]
        entries.append(bench_scale.entry(cpus, record["results"], setup))  # type: ignore[arg-type]
    # The network rows need a multiqueue tap in a namespace (tests/qemu/scenarios_net_mq.py).
    why_not = scenarios_net_mq.host_can_run()
    if why_not:
        say(f"scale: no {bench_scale.NET_WORKLOAD} rows: {why_not}")
    for cpus in bench_scale.CPU_COUNTS if not why_not else ():
        network = scenarios_net_mq.TapNetwork(f"bench{cpus}", cpus)
        section = BenchSection(
            name=f"scale-net-{cpus}cpu", kernel_sections="netscale", wrap=network.wrap,
            devices=bench_scale.net_devices(cpus, network), append=f"net.pairs={cpus}",
            description=f"{bench_scale.NET_WORKLOAD} with {cpus} vCPU(s), a virtio-net card of {cpus} "
                        f"queue pairs on a multiqueue tap",
            columns=[("pps", "frames/s", "{:.0f}"), ("notifications", "notifications", "{}")],
        )
        try:
            record = run_bench_section(section, kernel, options)
        finally:
            network.delete()
        boots[f"net-{cpus}"] = record
        setup = dict(record["setup"]).get("netscale.setup", {})  # type: ignore[call-overload]
        entries.append(bench_scale.entry(cpus, record["results"], setup,  # type: ignore[arg-type]
                                         bench_scale.NET_WORKLOAD))
    entries = bench_scale.with_speedup(entries)
    print(f"Scale: {bench_scale.WORKLOAD} and {bench_scale.NET_WORKLOAD} by vCPU count "
          f"(median of {options.repeat} runs x {options.seconds:g}s):")
    for line in bench_scale.table_lines(entries):
        print(line)
    print()
    return {"section": "scale", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "accel": boots["1"]["accel"], "scale": entries, "results": [], "boots": boots}


#: Sections with their own runner instead of a `BenchSection` entry.
BENCH_EXTRA_SECTIONS = ["ring", "console", "net-echo", "boot", "cost", "net-host", "iommu", "scale"]


def run_cost_bench(kernel: Path, options: argparse.Namespace) -> dict[str, object]:
    """Guest instructions per request (tests/qemu/bench_cost.py): the blk
    compare boot and the net boot again, under TCG with `-icount shift=0`."""
    icount = argparse.Namespace(**{**vars(options), "accel": "tcg", "seconds": options.cost_seconds,
                                   "repeat": min(options.repeat, 3)})
    rows: list[dict[str, object]] = []
    boots = {}
    for name in ("blk", "net"):
        base = BENCH_SECTIONS[name]
        section = BenchSection(
            name=f"cost-{name}", description=f"{base.name} under -icount shift=0: TSC ticks are guest instructions",
            devices=lambda ctx, base=base: [*base.devices(ctx), *bench_cost.ICOUNT_ARGS],
            machine=base.machine, kernel_sections=base.kernel_sections or base.name, columns=base.columns,
        )
        record = run_bench_section(section, kernel, icount)
        boots[name] = {"qemu": record["qemu"], "serial_log": record["serial_log"]}
        rows += record["results"]  # type: ignore[arg-type]
    cost = bench_cost.cost_entries(rows)
    print(f"Guest instructions per request (-icount shift=0, TCG, median of {icount.repeat} run(s)):")
    for line in bench_cost.table_lines(cost):
        print(line)
    print()
    return {"section": "cost", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "accel": "tcg",
            "accel_reason": "-icount needs TCG", "cost": cost, "results": [], "rows": rows, "boots": boots}


def run_net_host_bench(production: Path, options: argparse.Namespace) -> dict[str, object]:
    """The network from the host, beside Linux's recorded figures (tests/qemu/bench_net_host.py)."""
    say("net-host: 4 MiB TCP echo (reader thread), HTTP GETs for 5 s (new connection each), "
        "shell ping to 10.0.2.2; Linux 6.1's recorded figures beside")
    try:
        with bench_progress("net-host"):
            record = bench_net_host.run(production, BUILD_DIR, options.accel, rounds=options.repeat)
    except RuntimeError as err:
        raise XError(str(err)) from err
    for line in bench_net_host.table_lines(record["net_host"]):  # type: ignore[arg-type]
        print(line)
    print(f"host load average before {record['load_before']}, after {record['load_after']}")
    print()
    return record


def run_echo_bench(kernel: Path, options: argparse.Namespace) -> dict[str, object]:
    """TCP echo throughput from the host through hostfwd (tests/qemu/bench_echo.py),
    on a normal boot of the production `kernel`."""
    say("net-echo: TCP echo to the guest's port 7 through QEMU user networking, bytes checked")
    try:
        record = bench_echo.run(kernel, BUILD_DIR, options.accel, mib=1, repeat=options.repeat)
    except RuntimeError as err:
        raise XError(str(err)) from err
    print(f"net-echo: {len(record['results'])} round(s) x 1 MiB; median {record['median_mb_per_s']:.2f} MB/s "
          f"[{record['min_mb_per_s']:.2f}-{record['max_mb_per_s']:.2f}]; every echo checked byte for byte; "
          f"peer: {record['peer']}")
    print()
    return record


def cmd_bench(options: argparse.Namespace) -> int:
    extra = BENCH_EXTRA_SECTIONS
    chosen = options.section or [*BENCH_SECTIONS, *extra]
    unknown = [s for s in chosen if s not in BENCH_SECTIONS and s not in extra]
    if unknown:
        raise XError(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(BENCH_SECTIONS)})")
    setup()
    # The benchmark build: mode=bench and the peer stack (virtio-drivers).
    kernel = build_kernel(release=not options.debug, features=("bench",))
    say(f"kernel: {shown(kernel)} ({kernel_builds.describe(('bench',))})")
    # Normal boots (no mode=: boot.microvm.ready, net-echo) time the kernel
    # people boot, not the benchmark build, whose extra code and features
    # would be measured with it.
    choice = qm.choose_accel(options.accel)
    say(f"accelerator: {describe_accel(choice)}"
        + (" (x.py run picks the same)" if options.accel == "auto" else f" (--accel {options.accel})"))
    options.accel_choice = choice
    production = None
    if "boot" in chosen or "net-echo" in chosen or "net-host" in chosen:
        production = build_kernel(release=not options.debug)
        say(f"kernel for normal boots: {shown(production)} ({kernel_builds.describe(())})")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    records = []
    for name in chosen:
        if name == "boot":
            assert production is not None
            records.append(run_boot_bench(kernel, production, options))
            continue
        if name in ("cost", "net-host"):
            if name == "cost":
                record = run_cost_bench(kernel, options)
            else:
                assert production is not None
                record = run_net_host_bench(production, options)
            (BENCH_DIR / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
            say(f"{name}: results in {(BENCH_DIR / f'{name}.json').relative_to(REPO)}")
            records.append(record)
            continue
        if name == "net-echo":
            assert production is not None
            record = run_echo_bench(production, options)
            (BENCH_DIR / "net-echo.json").write_text(json.dumps(record, indent=2) + "\n")
            say(f"net-echo: results in {(BENCH_DIR / 'net-echo.json').relative_to(REPO)}")
            records.append(record)
            continue
        if name in ("ring", "console", "iommu", "scale"):
            runner = {"ring": run_ring_bench, "console": run_console_bench, "iommu": run_iommu_bench,
                      "scale": run_scale_bench}[name]
            record = runner(kernel, options)
            (BENCH_DIR / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
            say(f"{name}: results in {(BENCH_DIR / f'{name}.json').relative_to(REPO)}")
            records.append(record)
            continue
        record = run_bench_section(BENCH_SECTIONS[name], kernel, options)
        path = BENCH_DIR / f"{name}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        say(f"{name}: results in {path.relative_to(REPO)}")
        records.append(record)
    written = write_comparison(records, options)
    missing = bench_results.missing_sections(bench_results.load(BENCH_DIR / "results.json"),
                                             [*BENCH_SECTIONS, *extra]) if written else []
    if missing:
        say(f"docs/benchmarks.md and the README's table left as they are: build/bench/results.json has no run "
            f"of {', '.join(missing)} yet, and a page without them would drop their tables "
            f"(./x.py bench runs every section; then python3 tests/book/bench_page.py rewrites the page)")
    elif written:
        page = bench_page.write_page()
        say(f"benchmark page in {page.relative_to(REPO)} (the book's Benchmarks chapter)")
        if bench_page.update_readme():
            say("README.md: ratio table updated")
    return 0


# ---------------------------------------------------------------- docs


def cmd_soak(options: argparse.Namespace) -> int:
    """Block I/O in the guest under network load from the host for --minutes
    (tests/qemu/soak.py); fails on a lost or changed byte, a stall or growth
    of the guest's heap or frame use. Then --crash-runs more crash-consistency
    runs (tests/qemu/scenarios_crash.py, where the tree has it), their kill
    points drawn from the same seed."""
    setup()
    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "little")
    seconds = max(1, round(options.minutes * 60))
    say(f"soak: {seconds} s of block rounds under network load, seed {seed} "
        f"(repeat: ./x.py soak --minutes {options.minutes:g} --crash-runs {options.crash_runs} --seed {seed})")
    kernel = build_kernel(features=("selftest",))
    kernels = {("selftest",): kernel}
    outcomes = harness.run_scenarios([soak.soak_scenario("soak", seconds, seed)], kernels, BUILD_DIR, jobs=1,
                                     tcg_only=True)
    if options.crash_runs:
        try:
            from qemu import scenarios_crash  # noqa: PLC0415  (not in every tree yet)
        except ImportError:
            say("soak: no crash-consistency scenarios in this tree (tests/qemu/scenarios_crash.py): skipped")
        else:
            import random  # noqa: PLC0415
            random.seed(seed)  # the crash scenarios draw their kill points from `random`
            crash = harness.run_scenarios(scenarios_crash.soak_scenarios(options.crash_runs), kernels, BUILD_DIR,
                                          jobs=1, tcg_only=True)
            for outcome in crash:
                assert outcome.ctx is not None
                summary = outcome.ctx.file("crash-summary.txt")
                print(f"{outcome.scenario.name}: {summary.read_text().strip() if summary.exists() else '-'}")
            outcomes += crash
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in failed:
        print("\n" + harness.failure_report(outcome), flush=True)
    print(f"soak: {len(outcomes) - len(failed)} of {len(outcomes)} runs passed (seed {seed})")
    return 1 if failed else 0


def cmd_docs(options: argparse.Namespace) -> int:
    if options.capture_traces:
        return capture_traces(options)
    if options.serve:
        return mdbook.serve(say, options.port)
    try:
        index = mdbook.build(say)
    except mdbook.BookError as err:
        raise XError(str(err)) from err
    print(index)
    return 0


def capture_traces(options: argparse.Namespace) -> int:
    """Boots the kernel with log=trace once and rewrites the book's excerpts (docs/traces/)."""
    setup()
    kernel = build_kernel()
    scenario = traces.scenario()
    scenario.check = None
    say(f"booting {scenario.machine}/{scenario.firmware}/tcg with log=trace to capture the book's excerpts")
    outcome = harness.run_scenario(scenario, kernel, BUILD_DIR, tcg_only=True)
    if not outcome.passed:
        print(harness.failure_report(outcome))
        raise XError("the trace boot failed; excerpts left as they were")
    try:
        written = traces.write(outcome.log_text)
    except ValueError as err:
        raise XError(str(err)) from err
    for path in written:
        say(f"wrote {path.relative_to(REPO)}")
    return 0


#: Boot-time rows: (machine, devices). Time is QEMU start to the kernel's
#: `bench: boot.ready` (every device probed, brought up and claimed) and exit.
BOOT_MACHINES: list[tuple[str, list[str]]] = [
    ("q35", ["-drive", "if=none,id=b0,driver=null-co,size=1073741824",
             "-device", "virtio-blk-pci,drive=b0,disable-legacy=on",
             "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
             "-device", "virtio-serial-pci,disable-legacy=on"]),
    ("pc", ["-drive", "if=none,id=b0,driver=null-co,size=1073741824",
            "-device", "virtio-blk-pci,drive=b0,disable-legacy=on",
            "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
            "-device", "virtio-serial-pci,disable-legacy=on"]),
    ("microvm", ["-global", "virtio-mmio.force-legacy=false",
                 "-drive", "if=none,id=b0,driver=null-co,size=1073741824",
                 "-device", "virtio-blk-device,drive=b0",
                 "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-device,netdev=n0",
                 "-device", "virtio-serial-device"]),
]  # fmt: skip


#: The normal boot whose first serial line to `kernel: ready` is timed (default log level).
BOOT_READY_MACHINE = "microvm"


def run_boot_ready(kernel: Path, options: argparse.Namespace, run: int, boots: int) -> dict[str, object]:
    """One normal boot of the production `kernel` on BOOT_READY_MACHINE, stopped
    at `kernel: ready`: the time from the first serial line to that line, as
    the harness saw them (1 ms polls)."""
    devices = dict(BOOT_MACHINES)[BOOT_READY_MACHINE]
    scenario = harness.Scenario(
        name=f"bench-boot-ready-{BOOT_READY_MACHINE}", machine=BOOT_READY_MACHINE,
        firmware=qm.default_firmware(BOOT_READY_MACHINE), accel=options.accel, devices=list(devices), append="",
        expect_status=harness.KILLED, stop_on=r"^kernel: ready$", expect_in_order=[r"^kernel: ready$"],
        timeout_s=60.0, poll_interval_s=0.001,
    )
    tty = sys.stdout.isatty()
    line = f"x.py: boot: {BOOT_READY_MACHINE} first line to kernel: ready, run {run + 1}/{boots}"
    print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
    outcome = harness.run_scenario(scenario, kernel, BUILD_DIR)
    if not outcome.passed or outcome.first_line_s is None or outcome.stop_on_s is None:
        print()
        print(harness.failure_report(outcome), flush=True)
        raise XError(f"boot-to-ready benchmark on {BOOT_READY_MACHINE} failed: " + "; ".join(outcome.problems))
    name = f"boot.{BOOT_READY_MACHINE}.ready"
    cpu_ms = None
    if outcome.first_line_cpu_s is not None and outcome.stop_on_cpu_s is not None:
        cpu_ms = (outcome.stop_on_cpu_s - outcome.first_line_cpu_s) * 1000
    return {"name": name, "workload": name, "mode": "boot-ready", "driver": "ours", "accel": outcome.accel.name,
            "first_line_ms": outcome.first_line_s * 1000, "ready_ms": outcome.stop_on_s * 1000,
            "first_line_to_ready_ms": (outcome.stop_on_s - outcome.first_line_s) * 1000,
            "first_line_to_ready_cpu_ms": cpu_ms}


def run_boot_bench(kernel: Path, production: Path, options: argparse.Namespace) -> dict[str, object]:
    """Boot time per machine type (blk + net + console), up to 3 boots each
    of the benchmark build `kernel` (`mode=bench bench=ready`), and a normal
    boot's first serial line to `kernel: ready` (up to 5 boots) of the
    `production` kernel."""
    rows: list[dict[str, object]] = []
    say("boot: QEMU start to every virtio device ready, per machine type (ours only: virtio-drivers "
        "is measured on the blk device's bring-up inside the compare boot, see blk.peer.setup)")
    for machine, devices in BOOT_MACHINES:
        boots = min(options.repeat, 3)
        for run in range(boots):
            scenario = harness.Scenario(
                name=f"bench-boot-{machine}", machine=machine, firmware=qm.default_firmware(machine),
                accel=options.accel, devices=list(devices), append="mode=bench bench=ready",
                expect_status=qm.EXIT_SELFTEST_PASS, expect_in_order=[r"^bench: boot\.ready", r"^bench: done$"],
                timeout_s=60.0,
            )
            tty = sys.stdout.isatty()
            line = f"x.py: boot: {machine} run {run + 1}/{boots}"
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
            outcome = harness.run_scenario(scenario, kernel, BUILD_DIR)
            if not outcome.passed:
                print()
                print(harness.failure_report(outcome), flush=True)
                raise XError(f"boot benchmark on {machine} failed: " + "; ".join(outcome.problems))
            _, found, _, _ = bench_compare.parse_bench_lines(outcome.log_text)
            guest_us = next((r.get("uptime_us") for r in found if r["name"] == "boot.ready"), None)
            rows.append({"name": f"boot.{machine}", "workload": f"boot.{machine}", "mode": "boot",
                         "driver": "ours", "accel": outcome.accel.name, "wall_ms": outcome.wall_s * 1000,
                         "first_line_ms": (outcome.first_line_s or 0) * 1000, "guest_ready_us": guest_us})
    ready_boots = min(options.repeat, 5)
    for run in range(ready_boots):
        rows.append(run_boot_ready(production, options, run, ready_boots))
    print()
    for machine, _ in BOOT_MACHINES:
        wall = [float(r["wall_ms"]) for r in rows if r["workload"] == f"boot.{machine}"]  # type: ignore[arg-type]
        guest = [float(r["guest_ready_us"]) / 1000 for r in rows  # type: ignore[arg-type]
                 if r["workload"] == f"boot.{machine}" and isinstance(r["guest_ready_us"], (int, float))]
        print(f"  boot.{machine:8} QEMU start to exit {statistics_line(wall)} ms; "
              f"kernel clock at ready {statistics_line(guest)} ms")
    ready = [float(r["first_line_to_ready_ms"]) for r in rows if r["mode"] == "boot-ready"]  # type: ignore[arg-type]
    cpu = [float(r["first_line_to_ready_cpu_ms"]) for r in rows  # type: ignore[arg-type]
           if r["mode"] == "boot-ready" and isinstance(r["first_line_to_ready_cpu_ms"], (int, float))]
    print(f"  boot.{BOOT_READY_MACHINE}.ready first serial line to kernel: ready {statistics_line(ready, 1)} ms, "
          f"QEMU CPU time {statistics_line(cpu, 1)} ms (normal boot, default log level, blk + net + console)")
    return {"section": "boot", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": rows,
            "accel": ", ".join(sorted({str(r["accel"]) for r in rows}))}


def statistics_line(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    median = ordered[(len(ordered) - 1) // 2]
    return f"{median:.{digits}f} [{ordered[0]:.{digits}f}-{ordered[-1]:.{digits}f}]"


def median_rows(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One row per name: the run with the median figure of merit (IOPS,
    packets or MB/s: `bench_compare.merit`; rows repeat with `--repeat`)."""
    by_name: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_name.setdefault(str(row["name"]), []).append(row)
    picked = []
    for runs in by_name.values():
        runs = sorted(runs, key=lambda r: (bench_compare.merit(r) or ("", 0.0))[1])
        picked.append(runs[(len(runs) - 1) // 2])
    return picked


class bench_progress:
    """A one-line `elapsed` counter on the terminal while a bench boot runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop = None

    def __enter__(self) -> "bench_progress":
        import threading
        self.stop = threading.Event()
        started = time.monotonic()
        tty = sys.stdout.isatty()

        def tick() -> None:
            assert self.stop is not None
            while not self.stop.wait(1.0 if tty else 15.0):
                line = f"x.py: {self.name}: running in QEMU, {time.monotonic() - started:.0f}s"
                print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
            if tty:
                print("\r\033[K", end="", flush=True)

        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.stop.set()
        self.thread.join()


def write_comparison(records: Sequence[dict[str, object]], options: argparse.Namespace) -> bool:
    """Ours against virtio-drivers (and Linux, and ourselves under -icount):
    the table, build/bench/results.json (every section's latest run, merged:
    tests/qemu/bench_results.py) and build/bench/ratios.svg (every ratio).

    Returns whether results.json was written."""
    rows = [row for record in records for row in record["results"]]  # type: ignore[union-attr]
    summary = bench_compare.summarize(rows)
    boot = bench_compare.boot_summary(rows)
    host = host_description()
    accel = ", ".join(sorted({str(r["accel"]) for r in records}))
    if summary or boot:
        print(f"Ours vs virtio-drivers (median [min-max] of {options.repeat} runs x {options.seconds:g}s, "
              f"accel {accel}, {host}):")
        for line in bench_compare.table_lines(summary + boot):
            print(line)
    choice = getattr(options, "accel_choice", None)
    load = bench_net_host.load()
    command = "./x.py bench" + "".join(f" --section {s}" for s in options.section or [])
    run: dict[str, dict[str, object]] = {}
    for record in records:
        header = {"when": record.get("when") or time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
                  "host": host, "load": load, "runs_per_workload": options.repeat,
                  "seconds_per_run": options.seconds,
                  "accel_reason": record.get("accel_reason") or (choice.reason if choice else "")}
        run[str(record["section"])] = bench_results.section_entry(record, header, record.get("ring", []))  # type: ignore[arg-type]
    path = BENCH_DIR / "results.json"
    results = bench_results.merge(bench_results.load(path), run, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host, "command": command,
        "runs_per_workload": options.repeat, "seconds_per_run": options.seconds, "load": load,
        "accel_choice": {"name": choice.name, "requested": choice.requested, "reason": choice.reason}
        if choice else None,
    })
    ring = results["ring"]
    results["ring_markdown"] = "\n".join(ring_table_lines(ring)) if ring else ""  # type: ignore[arg-type]
    iommu = results["iommu"]
    results["iommu_markdown"] = "\n".join(bench_iommu.table_lines(iommu)) if iommu else ""  # type: ignore[arg-type]
    scale = results["scale"]
    results["scale_markdown"] = "\n".join(bench_scale.table_lines(scale)) if scale else ""  # type: ignore[arg-type]
    path.write_text(json.dumps(results, indent=2) + "\n")
    bars = bench_results.plot_entries(results)
    if not bars:
        say(f"results in {path.relative_to(REPO)} (nothing with a ratio: plot left as it was)")
        return True
    plot = BENCH_DIR / "ratios.svg"
    bench_compare.write_svg(bars, plot, f"latest run of each section ({results['accel']}), {host}")
    say(f"results in {path.relative_to(REPO)} (sections {', '.join(results['sections'])}), "  # type: ignore[arg-type]
        f"plot in {plot.relative_to(REPO)}")
    return True


def host_description() -> str:
    """CPU model and core count of the machine the benchmark ran on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs, load average {load} at the end"


# ---------------------------------------------------------------- command line


def add_boot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--machine", choices=qm.MACHINES, default="q35",
                        help="QEMU machine type (default: q35)")
    parser.add_argument("--accel", choices=("kvm", "tcg", "auto"), default="auto",
                        help="accelerator (default: KVM when /dev/kvm opens read-write, else TCG)")
    parser.add_argument("--firmware", choices=qm.FIRMWARES, default=None,
                        help="firmware for pc/q35 (default: qboot, ~0.1 s to the kernel; "
                             "SeaBIOS takes 3-4 s under KVM); microvm has its own")
    parser.add_argument("--append", default="", metavar="CMDLINE",
                        help='kernel command line, e.g. "mode=selftest log=debug"')
    parser.add_argument("--release", action="store_true", help="use the release build")
    parser.add_argument("--display", action="store_true",
                        help="add a virtio-gpu screen and a virtio keyboard: a window where one can "
                             "open (DISPLAY set), else VNC and screendumps (tests/qemu/display.py)")


def cmd_fuzz(options: argparse.Namespace) -> int:
    """`./x.py fuzz [TARGET...] [--seconds N]`: see tests/qemu/fuzz.py and fuzz/README.md."""
    try:
        return fuzz.run(options.targets, options.seconds, options.sanitizer, options.merge, say)
    except fuzz.FuzzError as err:
        raise XError(str(err)) from err


def parse_args(argv: list[str]) -> argparse.Namespace:
    # Everything after a lone `--` goes to QEMU untouched.
    qemu_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, qemu_args = argv[:split], argv[split + 1:]

    parser = argparse.ArgumentParser(
        prog="x.py",
        description="Build, boot and test the virtio teaching kernel.",
        epilog="Start with `./x.py run` (boot it) and `./x.py test` (test everything).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("setup", help="install QEMU and the Rust target if missing (idempotent)")

    build = commands.add_parser(
        "build", help="build the kernel (with its self-tests) and print the ELF's path",
        description="Build the kernel and print the path of its ELF, which boots with a plain "
                    "`qemu-system-x86_64 -kernel` and runs `-append mode=selftest`. Each build has "
                    "a path of its own under build/.")
    build.add_argument("--release", action="store_true", help="optimised build")
    build.add_argument("--features", default="selftest", metavar="LIST",
                       help="kernel cargo features, comma-separated (default: selftest; `none` gives "
                            "the production kernel `x.py run` boots; `bench` the benchmark build)")

    run = commands.add_parser(
        "run", help="build and boot the kernel in QEMU with a virtio disk, network and console",
        description="Boot the kernel in QEMU. The terminal shows the serial log and the virtio "
                    "console; Ctrl-A X quits. Arguments after `--` go to QEMU as they are.",
        usage="x.py run [options] [-- extra QEMU args]")
    add_boot_options(run)

    qemu_cmd = commands.add_parser("qemu-cmd", help="print the QEMU command line `run` would use",
                                   usage="x.py qemu-cmd [options] [-- extra QEMU args]")
    add_boot_options(qemu_cmd)

    test = commands.add_parser(
        "test", help="fmt, clippy, host tests, kernel build and the QEMU scenarios",
        description="Run every check; exit non-zero if any fails. A summary table comes last.")
    test.add_argument("--tcg-only", action="store_true", help="run every scenario under TCG")
    test.add_argument("--filter", metavar="SUBSTR",
                      help="only steps and scenarios whose name contains SUBSTR "
                           "(the kernel is built when any scenario is selected)")
    test.add_argument("--jobs", type=int, default=2, metavar="N",
                      help="QEMU scenarios run at once (default 2; each QEMU uses one CPU)")

    bench = commands.add_parser(
        "bench", help="measure the drivers (table + build/bench/<section>.json + results.json)",
        description="Boot the kernel in mode=bench, once per section, on the accelerator `run` would pick "
                    "(TCG where KVM is the nested kvm_pvm), and report what it measured with the TSC. "
                    "Extra sections: cost (guest instructions per request under -icount shift=0), net-host "
                    "(echo, HTTP and ping from the host, beside Linux). Sections: "
                    + "; ".join(f"{s.name}: {s.description}" for s in BENCH_SECTIONS.values()))
    bench.add_argument("--section", action="append", choices=sorted([*BENCH_SECTIONS, *BENCH_EXTRA_SECTIONS]), metavar="NAME",
                       help=f"only this section (repeatable; default all: "
                            f"{', '.join([*BENCH_SECTIONS, *BENCH_EXTRA_SECTIONS])})")
    bench.add_argument("--seconds", type=float, default=1.0, metavar="S",
                       help="time per workload and mode (default 1)")
    bench.add_argument("--accel", choices=("kvm", "tcg", "auto"), default="auto",
                       help="accelerator (default auto, as `run`: KVM where it runs the guest at speed, TCG "
                            "where /dev/kvm is unusable or the nested kvm_pvm module that emulates it)")
    bench.add_argument("--cost-seconds", type=float, default=0.05, metavar="S",
                       help="guest seconds per workload of the `cost` section (under -icount shift=0 one "
                            "guest second is 10^9 instructions; default 0.05)")
    bench.add_argument("--debug", action="store_true", help="use the debug build instead of release")
    bench.add_argument("--firmware", choices=qm.FIRMWARES, default=None,
                       help="firmware for the pc/q35 boots (default qboot)")
    bench.add_argument("--console-mib", type=int, default=1, metavar="M",
                       help="MiB per run and stack for the console section (1-256, default 1)")
    bench.add_argument("--repeat", type=int, default=5, metavar="N",
                       help="runs of every workload, for min / median / max (default 5)")

    soak_parser = commands.add_parser(
        "soak", help="block I/O in the guest under network load from the host, for N minutes",
        description="Boot the self-test kernel with soak=on and load its echo and HTTP services from "
                    "the host while it writes, reads back and checks its scratch disk (tests/qemu/soak.py). "
                    "Fails on any lost or corrupted byte, a stall, or heap/frame growth.")
    soak_parser.add_argument("--minutes", type=float, default=5.0, metavar="N", help="how long (default 5)")
    soak_parser.add_argument("--crash-runs", type=int, default=10, metavar="N",
                             help="crash-consistency runs after the soak, each killing QEMU at another "
                                  "moment (default 10; 0: none)")
    soak_parser.add_argument("--seed", type=int, default=None,
                             help="seed of the guest's data and the host's load (default: random, printed)")

    docs = commands.add_parser(
        "docs", help="build the book (docs/) into build/book/ and print the path of index.html",
        description="Build the book with mdBook (installed with `cargo install mdbook --locked` when "
                    "missing). --serve serves it on 127.0.0.1 and rebuilds on every change.")
    docs.add_argument("--serve", action="store_true", help="serve the book locally (Ctrl-C stops)")
    docs.add_argument("--port", type=int, default=3000, help="port for --serve (default 3000)")
    docs.add_argument("--capture-traces", action="store_true",
                      help="boot once with log=trace and rewrite the book's excerpts (docs/traces/)")

    fuzz_cmd = commands.add_parser(
        "fuzz", help="run the cargo-fuzz targets (nightly; installs cargo-fuzz) and report executions",
        description="Fuzz what a device or a user controls (targets in tests/src/fuzz/, shims in "
                    "fuzz/), one target at a time under nice. New inputs go to build/fuzz/corpus/, "
                    "crashes to build/fuzz/artifacts/, the figures to build/fuzz/results.json. "
                    "`cargo test` replays the committed corpus on stable.")
    fuzz_cmd.add_argument("targets", nargs="*", metavar="TARGET", help="targets to run (default: all)")
    fuzz_cmd.add_argument("--seconds", type=int, default=60, metavar="N", help="time per target (default 60)")
    fuzz_cmd.add_argument("--sanitizer", choices=("none", "address"), default="none",
                          help="libFuzzer build sanitizer (default none: the drivers have no unsafe code, "
                               "and it runs several times faster; address checks the host Hal too)")
    fuzz_cmd.add_argument("--merge", action="store_true",
                          help="afterwards, add the new inputs that cover new code to fuzz/corpus/")

    options = parser.parse_args(argv)
    if options.command == "fuzz" and options.seconds < 1:
        parser.error("--seconds must be at least 1")
    if qemu_args and options.command not in ("run", "qemu-cmd"):
        parser.error("`-- extra QEMU args` only go with run and qemu-cmd")
    if options.command == "test" and options.jobs < 1:
        parser.error("--jobs must be at least 1")
    if options.command == "soak" and not 0 < options.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    if options.command == "soak" and not 0 <= options.crash_runs <= 10000:
        parser.error("--crash-runs must be in 0..10000")
    if options.command == "bench" and not 0 < options.seconds <= 60:
        parser.error("--seconds must be in (0, 60]")
    if options.command == "bench" and not 1 <= options.repeat <= 20:
        parser.error("--repeat must be in 1..20")
    options.qemu_args = qemu_args
    return options


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    handlers = {
        "setup": lambda o: (setup(), 0)[1],
        "build": cmd_build,
        "run": cmd_run,
        "qemu-cmd": cmd_qemu_cmd,
        "test": cmd_test,
        "bench": cmd_bench,
        "docs": cmd_docs,
        "soak": cmd_soak,
        "fuzz": cmd_fuzz,
    }
    try:
        return handlers[options.command](options)
    except XError as err:
        print(f"x.py: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nx.py: interrupted", file=sys.stderr)
        return 130
    except ValueError as err:  # bad machine/firmware combinations from machine.py
        print(f"x.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
