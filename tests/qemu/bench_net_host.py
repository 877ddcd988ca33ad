"""`x.py bench --section net-host`: the network path measured from the host, beside Linux.

The same method as the figures recorded for a Linux 6.1 guest on the same
QEMU 7.2 (TCG, user networking, q35, same kind of host), so that the two
can stand side by side:

- **TCP echo**: the host sends 4 MiB of random bytes to the guest's echo
  port (hostfwd to port 7) while a second thread reads the echo back; MB/s
  (10^6 bytes per second) of payload, first byte sent to last byte back,
  every byte checked (`net.echo_round_trip`); median of the rounds.
- **HTTP**: sequential `GET /` requests to the guest's port 80, a new
  connection for each, for 5 s; requests per second (each response checked
  for its status and Content-Length by `net.http_get`).
- **ping**: the shell's `ping 10.0.2.2` (the user network's gateway, which
  QEMU answers itself), on the virtio console; the median of the round-trip
  times it prints.

All three run in one boot of the production kernel with what `x.py run`
gives it (q35, user networking with the ports forwarded, a virtio console),
so the shell's idle loop drives the network (`kernel/src/shell/mod.rs`
`idle`, `kernel/src/net/mod.rs` `idle_with`), as for a person at the
console.

Wall-clock figures: they move with the host's load, which the record keeps
(`os.getloadavg` before and after). They are reported, never asserted.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from . import harness, net
from . import machine as qm

#: A Linux 6.1 guest measured the same way (QEMU 7.2, TCG, user networking;
#: recorded in issue 19): echo median of 9 rounds, HTTP over 5 s, ping median.
LINUX = {"echo_mb_per_s": 17.3, "http_requests_per_s": 133.0, "ping_ms": 1.18}

ECHO_BYTES = 4 << 20
HTTP_SECONDS = 5.0
PING_RE = re.compile(r"reply from 10\.0\.2\.2: seq \d+ time (\d+) us")


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def echo_http_interact(out: dict[str, object], rounds: int, echo_bytes: int,
                       http_seconds: float) -> Callable[[harness.RunContext], list[str]]:
    """The host side of the echo and HTTP measurements; fills `out`."""

    def interact(ctx: harness.RunContext) -> list[str]:
        problems: list[str] = []
        echoes: list[float] = []
        for index in range(rounds):
            data = os.urandom(echo_bytes)
            back, seconds = net.echo_round_trip(ctx.port("echo"), data, timeout_s=300.0)
            if back != data:
                problems.append(f"echo round {index}: {len(back)} of {len(data)} bytes came back intact")
                break
            echoes.append(len(data) / seconds / 1e6)
        out["echo_mb_per_s_runs"] = echoes
        requests, failures = 0, []
        started = time.monotonic()
        while time.monotonic() - started < http_seconds:
            try:
                status, _, body = net.http_get(ctx.port("http"), "/", timeout_s=20.0)
            except (OSError, AssertionError) as err:
                failures.append(str(err))
                if len(failures) > 3:
                    break
                continue
            if status != 200 or not body:
                failures.append(f"status {status}, {len(body)} body bytes")
                continue
            requests += 1
        elapsed = time.monotonic() - started
        out["http_requests"] = requests
        out["http_seconds"] = elapsed
        out["http_failures"] = failures[:5]
        if failures:
            problems.append(f"HTTP: {len(failures)} failed request(s), first: {failures[0]}")
        return problems

    return interact


def ping_interact(out: dict[str, object], commands: int) -> Callable[[harness.RunContext], list[str]]:
    """The shell's `ping 10.0.2.2`, `commands` times (3 echo requests each); fills `out`."""

    def interact(ctx: harness.RunContext) -> list[str]:
        from .console_session import Shell

        shell = Shell(ctx.file("console.sock"))
        try:
            shell.wait_prompt(timeout_s=1)
        except AssertionError:
            shell.type(b"\r", timeout_s=10)
        for _ in range(80):  # the lease may come after the prompt
            if "address 10.0.2.15" in shell.run("net"):
                break
            time.sleep(0.25)
        times: list[float] = []
        for _ in range(commands):
            text = shell.run("ping 10.0.2.2", timeout_s=30)
            times += [int(us) / 1000 for us in PING_RE.findall(text)]
        out["ping_ms_runs"] = times
        shell.send(b"poweroff\r")
        return [] if times else ["ping 10.0.2.2: no reply"]

    return interact


def session_devices(ctx: harness.RunContext) -> list[str]:
    """What `x.py run` gives the guest: user networking with the echo and
    HTTP ports forwarded from the host, and a virtio console for the shell
    (whose idle loop then drives the network)."""
    return [*qm.user_net_args("q35", hostfwd=[(ctx.port("echo"), 7), (ctx.port("http"), 80)]),
            "-chardev", f"socket,id=con,path={ctx.file('console.sock')},server=on,wait=off",
            *qm.console_args("q35", "con")]


def session_interact(out: dict[str, object], rounds: int, echo_bytes: int, http_seconds: float,
                     ping_commands: int) -> Callable[[harness.RunContext], list[str]]:
    """Echo and HTTP from the host, then the shell's ping (which powers off)."""
    services = echo_http_interact(out, rounds, echo_bytes, http_seconds)
    pinging = ping_interact(out, ping_commands)

    def interact(ctx: harness.RunContext) -> list[str]:
        return [*services(ctx), *pinging(ctx)]

    return interact


def scenario(out: dict[str, object], name: str, accel: str, rounds: int, echo_bytes: int,
             http_seconds: float, ping_commands: int) -> harness.Scenario:
    """One boot of the production kernel as `x.py run` boots it (q35, user
    networking, a console): echo and HTTP from the host, then ping."""
    return harness.Scenario(
        name=name, machine="q35", firmware="qboot", accel=accel, devices=session_devices, append="",
        expect_status=qm.EXIT_POWEROFF, expect_in_order=[r"^kernel: ready", r"^shell: poweroff$"],
        interact=session_interact(out, rounds, echo_bytes, http_seconds, ping_commands),
        interact_after=r"^shell: ready", timeout_s=120.0 + 60.0 * rounds + http_seconds,
    )


def run(kernel: Path, build_dir: Path, accel: str, rounds: int, echo_bytes: int = ECHO_BYTES,
        http_seconds: float = HTTP_SECONDS, ping_commands: int = 3, name: str = "bench-net-host") -> dict[str, object]:
    """One boot of the production `kernel` (echo, HTTP, ping); the record."""
    out: dict[str, object] = {}
    before = load()
    outcome = harness.run_scenario(scenario(out, name, accel, rounds, echo_bytes, http_seconds, ping_commands),
                                   kernel, build_dir)
    if not outcome.passed:
        raise RuntimeError("net-host failed: " + "; ".join(outcome.problems) + f" (serial log: {outcome.ctx.log})")
    return record(out, outcome.accel.name, before, load(), rounds, echo_bytes, http_seconds)


def record(out: dict[str, object], accel: str, load_before: list[float], load_after: list[float],
           rounds: int, echo_bytes: int, http_seconds: float) -> dict[str, object]:
    """The section's JSON record: ours, Linux's recorded figures, ratios."""
    echoes = [float(x) for x in out.get("echo_mb_per_s_runs", [])]  # type: ignore[union-attr]
    pings = [float(x) for x in out.get("ping_ms_runs", [])]  # type: ignore[union-attr]
    http_s = float(out.get("http_seconds", 0.0) or 0.0)  # type: ignore[arg-type]
    ours = {
        "echo_mb_per_s": statistics.median(echoes) if echoes else None,
        "http_requests_per_s": int(out.get("http_requests", 0) or 0) / http_s if http_s else None,  # type: ignore[call-overload]
        "ping_ms": statistics.median(pings) if pings else None,
    }
    rows = []
    for name, key, unit, better in (("echo", "echo_mb_per_s", "MB/s", "higher"),
                                    ("http", "http_requests_per_s", "requests/s", "higher"),
                                    ("ping", "ping_ms", "ms", "lower")):
        value, linux = ours[key], LINUX[key]
        ratio = None
        if isinstance(value, float) and value > 0:
            ratio = value / linux if better == "higher" else linux / value
        rows.append({"workload": f"net-host.{name}",
                     "key": key, "unit": unit, "ours": value, "linux": linux, "ratio": ratio, "better": better})
    return {
        "section": "net-host", "accel": accel, "machine": "q35",
        "description": "from the host: 4 MiB TCP echo with a reader thread, sequential HTTP GETs "
                       "(new connection each), guest ping to 10.0.2.2; Linux 6.1's recorded figures beside",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_before": load_before, "load_after": load_after,
        "echo_rounds": rounds, "echo_bytes": echo_bytes, "http_seconds_wanted": http_seconds,
        "raw": out, "net_host": rows, "results": [],
    }


def _num(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def table_lines(rows: list[dict[str, object]]) -> list[str]:
    """Ours beside Linux, as a Markdown table (ratio above 1: ours is better)."""
    lines = ["| measurement | unit | ours | Linux 6.1 (recorded) | ours vs Linux |", "| --- | --- | --: | --: | --: |"]
    for r in rows:
        lines.append(f"| `{r['workload']}` | {r['unit']} ({r['better']} is better) | {_num(r['ours'], 2)} | "
                     f"{_num(r['linux'], 2)} | {_num(r['ratio'], 2)} |")
    return lines


def plot_entries(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{"workload": f"vs Linux {r['workload']}", "ratio": float(r["ratio"])}  # type: ignore[arg-type]
            for r in rows if isinstance(r.get("ratio"), float)]
