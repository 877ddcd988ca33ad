"""The QEMU scenario runner.

A `Scenario` says how to boot the kernel (machine, firmware, accelerator,
devices, kernel command line) and what must come of it (QEMU's exit status,
patterns the serial log must and must not contain, an optional Python check
run afterwards). `run_scenarios` boots each one with its serial port written
to `build/qemu-logs/<name>.log`, watches that file as it grows to time the
boot, enforces the timeout, and returns an `Outcome` per scenario.

Timings are measured with `time.monotonic()` from just before QEMU is
started to the moment the runner sees the first complete serial line, the
`selftest: N passed, M failed` line and the `stop_on` line (each to within
the scenario's `poll_interval_s`). They are reported, never asserted.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import kernel_builds
from . import machine as qm

#: Status of a scenario that the runner stopped because its `stop_on`
#: pattern appeared (a kernel that idles never exits by itself).
KILLED = "killed after stop_on"
#: Status of a scenario that ran past its timeout.
TIMEOUT = "TIMEOUT"
#: Status of a scenario whose QEMU could not be started at all.
NOT_STARTED = "NOT STARTED"
#: Status of a scenario whose `requires` said this host cannot run it (not a failure).
SKIPPED = "SKIPPED"

#: Patterns that mean something went wrong in any boot that does not ask for it.
DEFAULT_FORBID: tuple[str, ...] = (r"^PANIC at ", r"^EXCEPTION ", r"^selftest: FAIL ")

#: The last line of a self-test run (kernel API contract).
SELFTEST_SUMMARY = re.compile(r"^selftest: (\d+) passed, (\d+) failed\s*$", re.MULTILINE)

#: How often the runner looks at the growing serial log.
POLL_INTERVAL_S = 0.005

#: A failed scenario's log is printed in full up to this many lines (else the tail).
MAX_LOG_LINES_PRINTED = 400


class RunContext:
    """What a scenario's device list and check function may ask for.

    - `file(name)`: a path in this scenario's private work directory
      (`build/qemu-work/<name>/`), e.g. a disk image listed in `files`.
    - `port(label)`: a free TCP port on 127.0.0.1, the same one for the same
      label within a scenario (for `hostfwd=` rules and for the check that
      connects to it).
    """

    def __init__(self, name: str, kernel: Path, workdir: Path, log: Path) -> None:
        self.name = name
        self.kernel = kernel
        self.workdir = workdir
        self.log = log
        self.ports: dict[str, int] = {}

    def file(self, name: str) -> Path:
        return self.workdir / name

    def port(self, label: str) -> int:
        if label not in self.ports:
            self.ports[label] = qm.free_port()
        return self.ports[label]


DeviceArgs = Sequence[str] | Callable[[RunContext], Sequence[str]]


@dataclass
class Scenario:
    """One boot of the kernel and what must come of it.

    Regexes are Python `re` patterns matched with `re.MULTILINE` against the
    serial log (carriage returns removed), so `^` and `$` anchor at lines.
    """

    name: str
    machine: str = "q35"
    #: "kvm", "tcg" or "auto"; "kvm" and "auto" fall back to TCG when
    #: /dev/kvm is unusable (the summary says so).
    accel: str = "auto"
    #: "seabios" or "qboot" for pc/q35; None for microvm (its own qboot).
    firmware: str | None = "qboot"
    #: Extra QEMU arguments (devices, backends), or a function of the
    #: `RunContext` returning them (for paths of created files and ports).
    devices: DeviceArgs = ()
    #: The kernel command line (`-append`).
    append: str = "mode=selftest"
    #: QEMU's exit status: an int (33 is self-test success), or `KILLED`
    #: when the runner is to stop QEMU once `stop_on` has appeared.
    expect_status: int | str = qm.EXIT_SELFTEST_PASS
    #: Must appear in this order (each after the previous match).
    expect_in_order: Sequence[str] = ()
    #: Must appear somewhere.
    expect_anywhere: Sequence[str] = ()
    #: Must not appear anywhere.
    forbid: Sequence[str] = DEFAULT_FORBID
    timeout_s: float = 30.0
    #: Run after QEMU has exited; returns problems (strings), or raises
    #: AssertionError. Gets the `Outcome` (log text, status, `ctx`).
    check: Callable[[Outcome], Iterable[str] | None] | None = None
    #: Files to create in the work directory before QEMU starts:
    #: name -> function that writes the file at the given path.
    files: Mapping[str, Callable[[Path], None]] = field(default_factory=dict)
    #: When this pattern appears in the log, the runner kills QEMU and the
    #: status becomes `KILLED`.
    stop_on: str | None = None
    #: Replace the whole QEMU command (for the "plain boot" scenario): a
    #: function of the `RunContext` returning the argument list; it must send
    #: the serial port to `ctx.log`. Machine/firmware/accel then only label
    #: the scenario in the summary.
    command: Callable[[RunContext], list[str]] | None = None
    memory: str = "256M"
    #: Add `-device isa-debug-exit` (without it the kernel can only halt).
    debug_exit: bool = True
    #: Run while QEMU runs, in a thread of its own, once `interact_after`
    #: has appeared in the serial log (at once if it is None): talks to the
    #: guest (e.g. through socket chardevs in the work directory) and returns
    #: problems (strings), or raises AssertionError. It should end the run
    #: itself (a `poweroff` in the shell); QEMU's exit or timeout ends the
    #: scenario either way, and the interaction gets a few seconds more.
    interact: Callable[[RunContext], Iterable[str] | None] | None = None
    interact_after: str | None = None
    #: End the run (status `KILLED`) as soon as `interact` has returned: for
    #: a kernel that serves the host until stopped (the network services).
    stop_after_interact: bool = False
    #: How often the runner looks at the growing serial log: the resolution
    #: of the timings (a boot benchmark asks for 1 ms).
    poll_interval_s: float = POLL_INTERVAL_S
    #: The kernel build to boot, by its cargo features (`()`: the production
    #: kernel `x.py run` boots). None: what `append` asks for
    #: (`kernel_builds.features_for_append`: `mode=selftest` and `fail=`
    #: need `selftest`, `mode=bench` needs `bench`, anything else boots the
    #: production kernel). Set it for a `command` scenario, or to boot a
    #: build that lacks what the command line asks for on purpose.
    kernel_features: Sequence[str] | None = None
    #: What the host must offer, checked before anything else: returns None
    #: if the scenario can run here, or one sentence saying why not (e.g. no
    #: network namespaces for a tap backend). The scenario is then SKIPPED
    #: with that sentence, neither passed nor failed.
    requires: Callable[[], str | None] | None = None
    #: A command QEMU runs under, made when the boot starts (it may set
    #: things up first): e.g. `ip netns exec NS` for a backend in a network
    #: namespace. Not applied to a `command` scenario.
    wrap: Callable[[RunContext], list[str]] | None = None

    def label(self, accel: qm.AccelChoice) -> str:
        """machine/firmware/accel, as shown in the summary."""
        firmware = self.firmware or ("qboot" if self.machine == "microvm" else "seabios")
        return f"{self.machine}/{firmware}/{accel.name}"


def kernel_features(scenario: Scenario) -> tuple[str, ...]:
    """The cargo features of the kernel build `scenario` boots."""
    if scenario.kernel_features is not None:
        return kernel_builds.normalize(scenario.kernel_features)
    return kernel_builds.features_for_append(scenario.append)


#: One kernel ELF for every scenario, or one per build (features -> ELF).
Kernels = Path | Mapping[tuple[str, ...], Path]


def kernel_for(scenario: Scenario, kernels: Kernels) -> Path:
    """The ELF `scenario` boots (KeyError if that build is not in `kernels`)."""
    if isinstance(kernels, Path):
        return kernels
    return kernels[kernel_features(scenario)]


@dataclass
class Outcome:
    scenario: Scenario
    accel: qm.AccelChoice
    status: int | str | None = None
    log_text: str = ""
    log_path: Path | None = None
    stderr_path: Path | None = None
    stderr_text: str = ""
    command: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    first_line_s: float | None = None
    selftest_done_s: float | None = None
    #: When the `stop_on` pattern appeared (seconds since QEMU started).
    stop_on_s: float | None = None
    #: CPU time QEMU had used (all its threads, Linux only) when the first
    #: line and the `stop_on` line were seen: unlike the wall times above,
    #: hardly changed by other processes competing for the host's CPUs.
    first_line_cpu_s: float | None = None
    stop_on_cpu_s: float | None = None
    problems: list[str] = field(default_factory=list)
    ctx: RunContext | None = None
    #: Why the scenario was SKIPPED (its `requires` answer).
    skip_reason: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def skipped(self) -> bool:
        return self.status == SKIPPED

    @property
    def note(self) -> str:
        if self.skipped:
            return f"skipped: {self.skip_reason}"
        if self.accel.name == "tcg" and self.accel.requested in ("kvm", "auto"):
            return f"TCG instead of KVM: {self.accel.reason}"
        return ""


def qemu_cpu_seconds(pid: int) -> float | None:
    """CPU time process `pid` has run, summed over its threads, from Linux's
    /proc/<pid>/task/*/schedstat (nanoseconds on a CPU); None elsewhere."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def evaluate(scenario: Scenario, status: int | str | None, log_text: str) -> list[str]:
    """Compare one boot's status and serial log with the scenario's expectations.

    Returns human-readable problems; an empty list means the scenario passed
    (before its `check` function runs). Pure function: unit-tested in
    `test_harness.py`.
    """
    problems: list[str] = []
    text = log_text.replace("\r", "")
    if status == TIMEOUT:
        problems.append(f"timed out after {scenario.timeout_s:g} s")
    elif status != scenario.expect_status:
        problems.append(f"QEMU exit status {status}, expected {scenario.expect_status}")
    position = 0
    for pattern in scenario.expect_in_order:
        found = re.compile(pattern, re.MULTILINE).search(text, position)
        if found is None:
            where = f"after line {_line_of(text, position)}" if position else "anywhere"
            problems.append(f"missing (in order, {where}): /{pattern}/")
        else:
            position = found.end()
    for pattern in scenario.expect_anywhere:
        if re.search(pattern, text, re.MULTILINE) is None:
            problems.append(f"missing: /{pattern}/")
    for pattern in scenario.forbid:
        found = re.search(pattern, text, re.MULTILINE)
        if found is not None:
            line_no = _line_of(text, found.start())
            line = text.splitlines()[line_no - 1] if text else ""
            problems.append(f"forbidden /{pattern}/ at line {line_no}: {line.strip()}")
    return problems


def _run_check(outcome: Outcome) -> list[str]:
    check = outcome.scenario.check
    if check is None:
        return []
    try:
        found = check(outcome)
    except AssertionError as err:
        return [f"check {check.__name__}: {err}"]
    except Exception as err:  # a broken check is a failed scenario, not a crash
        return [f"check {check.__name__} raised {type(err).__name__}: {err}"]
    return [f"check {check.__name__}: {p}" for p in (found or [])]


def build_command(scenario: Scenario, ctx: RunContext, accel: qm.AccelChoice) -> list[str]:
    if scenario.command is not None:
        return list(scenario.command(ctx))
    args = qm.base_args(
        ctx.kernel,
        scenario.machine,
        scenario.firmware,
        accel,
        append=scenario.append,
        memory=scenario.memory,
        debug_exit=scenario.debug_exit,
    )
    args += ["-serial", f"file:{ctx.log}"]
    devices = scenario.devices(ctx) if callable(scenario.devices) else scenario.devices
    args += list(devices)
    if scenario.wrap is not None:
        args = [*scenario.wrap(ctx), *args]
    return args


def run_scenario(scenario: Scenario, kernel: Kernels, build_dir: Path, tcg_only: bool = False) -> Outcome:
    """Boot one scenario to completion (or timeout) and judge it. `kernel` is
    the ELF, or a map from features to ELFs to pick it from (`kernel_for`)."""
    if scenario.requires is not None:
        reason = scenario.requires()
        if reason:
            return Outcome(scenario, qm.AccelChoice("tcg", scenario.accel, "not run"),
                           status=SKIPPED, skip_reason=reason)
    kernel = kernel_for(scenario, kernel)
    log_dir = build_dir / "qemu-logs"
    workdir = build_dir / "qemu-work" / scenario.name
    log_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log_path = log_dir / f"{scenario.name}.log"
    stderr_path = log_dir / f"{scenario.name}.qemu-stderr.log"
    log_path.unlink(missing_ok=True)

    # QEMU runs in the work directory: every path it gets must be absolute.
    ctx = RunContext(scenario.name, kernel.resolve(), workdir.resolve(), log_path.resolve())
    accel = qm.choose_accel(scenario.accel, tcg_only)
    if scenario.command is not None:
        # A fixed command runs as written; plain `qemu-system-x86_64` uses TCG.
        accel = qm.AccelChoice("tcg", "tcg", "QEMU's default accelerator")
    outcome = Outcome(scenario, accel, log_path=log_path, stderr_path=stderr_path, ctx=ctx)

    try:
        for name, make in scenario.files.items():
            make(ctx.file(name))
        outcome.command = build_command(scenario, ctx, accel)
    except Exception as err:
        outcome.status = NOT_STARTED
        outcome.problems = [f"setting up failed: {type(err).__name__}: {err}"]
        return outcome

    stop_on = re.compile(scenario.stop_on, re.MULTILINE) if scenario.stop_on else None
    collected = bytearray()
    scanned = 0  # bytes of `collected` already searched line by line
    interact_after = (
        re.compile(scenario.interact_after, re.MULTILINE) if scenario.interact_after else None
    )
    interaction: threading.Thread | None = None
    interaction_problems: list[str] = []

    def start_interaction() -> threading.Thread:
        def body() -> None:
            assert scenario.interact is not None
            name = getattr(scenario.interact, "__name__", "interact")
            try:
                found = scenario.interact(ctx)
            except AssertionError as err:
                interaction_problems.append(f"interact {name}: {err}")
                return
            except Exception as err:  # a broken interaction fails the scenario
                interaction_problems.append(f"interact {name} raised {type(err).__name__}: {err}")
                return
            interaction_problems.extend(f"interact {name}: {p}" for p in (found or []))

        thread = threading.Thread(target=body, name=f"interact-{scenario.name}", daemon=True)
        thread.start()
        return thread

    def scan_new_lines(now: float) -> bool:
        """Time the boot's milestones in newly completed lines; True if `stop_on` matched."""
        nonlocal scanned
        end = collected.rfind(b"\n") + 1
        if end <= scanned:
            return False
        lines = collected[scanned:end].decode("utf-8", "replace").replace("\r", "")
        scanned = end
        if outcome.first_line_s is None:
            outcome.first_line_s = now - start
            outcome.first_line_cpu_s = qemu_cpu_seconds(proc.pid)
        if outcome.selftest_done_s is None and SELFTEST_SUMMARY.search(lines):
            outcome.selftest_done_s = now - start
        stopped = bool(stop_on and stop_on.search(lines))
        if stopped and outcome.stop_on_s is None:
            outcome.stop_on_s = now - start
            outcome.stop_on_cpu_s = qemu_cpu_seconds(proc.pid)
        return stopped

    with open(stderr_path, "wb") as stderr_file:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                outcome.command,
                stdin=subprocess.DEVNULL,
                stdout=stderr_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,  # our Ctrl-C doesn't reach it; we kill it ourselves
            )
        except OSError as err:
            outcome.status = NOT_STARTED
            outcome.problems = [f"could not start {outcome.command[0]}: {err}"]
            return outcome
        with _live_lock:
            _live.add(proc)
        log_file = None
        try:
            while True:
                now = time.monotonic()
                if log_file is None and log_path.exists():
                    log_file = open(log_path, "rb")
                if log_file is not None:
                    chunk = log_file.read()
                    if chunk:
                        collected += chunk
                        if scan_new_lines(now):
                            proc.kill()
                            proc.wait()
                            outcome.status = KILLED
                            break
                if (
                    scenario.interact is not None
                    and interaction is None
                    and (interact_after is None or interact_after.search(
                        collected.decode("utf-8", "replace")))
                ):
                    interaction = start_interaction()
                if (
                    scenario.stop_after_interact
                    and interaction is not None
                    and not interaction.is_alive()
                ):
                    proc.kill()
                    proc.wait()
                    outcome.status = KILLED
                    break
                status = proc.poll()
                if status is not None:
                    outcome.status = status
                    break
                if now - start > scenario.timeout_s:
                    proc.kill()
                    proc.wait()
                    outcome.status = TIMEOUT
                    break
                time.sleep(scenario.poll_interval_s)
            outcome.wall_s = time.monotonic() - start
            if log_file is not None:
                collected += log_file.read()
                scan_new_lines(time.monotonic())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with _live_lock:
                _live.discard(proc)
            if log_file is not None:
                log_file.close()

    if interaction is not None:
        interaction.join(timeout=5.0)
        if interaction.is_alive():
            interaction_problems.append("the interaction was still running when QEMU ended")
    elif scenario.interact is not None:
        interaction_problems.append(
            f"the interaction never started (/{scenario.interact_after}/ not in the serial log)")
    outcome.log_text = collected.decode("utf-8", "replace").replace("\r", "")
    outcome.stderr_text = stderr_path.read_text("utf-8", "replace")
    outcome.problems = evaluate(scenario, outcome.status, outcome.log_text)
    outcome.problems += interaction_problems
    if outcome.status not in (TIMEOUT, NOT_STARTED):
        outcome.problems += _run_check(outcome)
    return outcome


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def describe(outcome: Outcome) -> str:
    """One line per finished scenario, printed as soon as it ends."""
    if outcome.skipped:
        return f"SKIP {outcome.scenario.name}: {outcome.skip_reason}"
    verdict = "PASS" if outcome.passed else "FAIL"
    text = (
        f"{verdict} {outcome.scenario.name} [{outcome.scenario.label(outcome.accel)}] "
        f"status={outcome.status} in {outcome.wall_s:.2f}s: "
        f"first line {fmt_seconds(outcome.first_line_s)}, "
        f"selftest done {fmt_seconds(outcome.selftest_done_s)}"
    )
    if outcome.note:
        text += f" ({outcome.note})"
    return text


def failure_report(outcome: Outcome) -> str:
    """Why a scenario failed, with its serial log, for a CI reader."""
    out = [f"=== FAIL {outcome.scenario.name} ==="]
    out += [f"  - {p}" for p in outcome.problems]
    if outcome.command:
        out.append("  command: " + shlex.join(outcome.command))
    lines = outcome.log_text.splitlines()
    if outcome.status == TIMEOUT and lines:
        out.append("  last lines before the timeout:")
        out += ["    " + line for line in lines[-15:]]
    if len(lines) > MAX_LOG_LINES_PRINTED:
        out.append(
            f"--- serial log: last {MAX_LOG_LINES_PRINTED} of {len(lines)} lines "
            f"(all in {outcome.log_path}) ---"
        )
        lines = lines[-MAX_LOG_LINES_PRINTED:]
    else:
        out.append(f"--- serial log ({outcome.log_path}) ---")
    out += lines if lines else ["(empty)"]
    if outcome.stderr_text.strip():
        out.append(f"--- QEMU stdout/stderr ({outcome.stderr_path}) ---")
        out += outcome.stderr_text.rstrip().splitlines()[-50:]
    out.append(f"=== end of {outcome.scenario.name} ===")
    return "\n".join(out)


def run_scenarios(
    scenarios: Sequence[Scenario],
    kernel: Kernels,
    build_dir: Path,
    jobs: int = 2,
    tcg_only: bool = False,
    out=sys.stdout,
) -> list[Outcome]:
    """Run scenarios, `jobs` at a time, printing each verdict as it arrives.

    Returns the outcomes in the order of `scenarios`.
    """
    print_lock = threading.Lock()

    def one(scenario: Scenario) -> Outcome:
        outcome = run_scenario(scenario, kernel, build_dir, tcg_only)
        with print_lock:
            print(describe(outcome), file=out, flush=True)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        try:
            return list(pool.map(one, scenarios))
        except KeyboardInterrupt:
            # QEMU runs in its own session and did not see the Ctrl-C.
            pool.shutdown(wait=False, cancel_futures=True)
            with _live_lock:
                for proc in _live:
                    proc.kill()
            raise


# QEMU processes running now, so that an interrupted run can stop them.
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
