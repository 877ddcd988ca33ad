"""TCP echo throughput between the host and the guest's echo server.

The network issue's benchmark asks for "TCP echo throughput to the host". The
guest serves TCP echo on port 7 in a normal boot (kernel/src/net/services.rs);
QEMU's user network forwards a free host port to it. This boots the kernel
normally, sends `mib` MiB of random bytes through the echo server several
times, checks each echo byte for byte (a wrong byte fails the benchmark, it is
never counted as speed) and reports MB/s of payload echoed, measured on the
host from the first byte sent to the last byte received.

The numbers include QEMU's user-mode TCP stack (slirp) on the host side, so
they measure the whole path the README's `./x.py run` user sees, not the
driver alone; the `net` section measures the driver alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import harness, net
from . import machine as qm


def run(kernel: Path, build_dir: Path, accel: str, mib: int, repeat: int) -> dict[str, object]:
    """One boot, `repeat` echo rounds of `mib` MiB; returns the JSON record."""
    rounds: list[dict[str, object]] = []

    def interact(ctx: harness.RunContext) -> list[str]:
        problems: list[str] = []
        for index in range(repeat):
            data = os.urandom(mib << 20)
            back, seconds = net.echo_round_trip(ctx.port("echo"), data, timeout_s=300.0)
            if back != data:
                first_bad = next((i for i, (a, b) in enumerate(zip(back, data)) if a != b), min(len(back), len(data)))
                problems.append(f"echo round {index}: {len(back)} of {len(data)} bytes came back, "
                                f"first difference at byte {first_bad}")
                break
            rounds.append({"name": "net.echo", "stack": "ours", "bytes": len(data), "seconds": seconds,
                           "mb_per_s": len(data) / seconds / 1e6})
        return problems

    scenario = harness.Scenario(
        name="bench-net-echo",
        machine="q35",
        firmware="qboot",
        accel=accel,
        devices=lambda ctx: qm.user_net_args("q35", hostfwd=[(ctx.port("echo"), 7)]),
        append="",
        expect_status=harness.KILLED,
        expect_in_order=[r"^kernel: ready"],
        interact=interact,
        interact_after=r"dhcp: address",
        stop_after_interact=True,
        timeout_s=120.0 + 60.0 * repeat * mib,
    )
    outcome = harness.run_scenario(scenario, kernel, build_dir)
    if not outcome.passed or not rounds:
        raise RuntimeError("net echo benchmark failed: " + "; ".join(outcome.problems or ["no round completed"])
                           + f" (serial log: {outcome.ctx.log})")
    speeds = sorted(float(r["mb_per_s"]) for r in rounds)  # type: ignore[arg-type]
    return {
        "section": "net-echo",
        "description": "TCP echo to the host through QEMU user networking (hostfwd), bytes checked",
        "accel": outcome.accel.name,
        "machine": "q35",
        "results": rounds,
        "median_mb_per_s": speeds[(len(speeds) - 1) // 2],
        "min_mb_per_s": speeds[0],
        "max_mb_per_s": speeds[-1],
        "peer": "not measured (virtio-drivers has no TCP/IP stack of its own)",
    }
