"""Multiqueue virtio-net (VIRTIO_NET_F_MQ, virtio 1.2 §5.1.6.5.5) against a
backend that really has several queues.

QEMU's user network (slirp) has one queue, so this scenario builds its own
network: a network namespace (`ip netns add`), in it a tap device with
`multi_queue` and the host side address 10.77.0.1/24, and QEMU started inside
the namespace (`ip netns exec`) with `-netdev tap,...,queues=4,vhost=off` and
`-device virtio-net-pci,mq=on,vectors=10` (2 * 4 pairs + config + control).
The kernel (the production build) gets `net.ip=10.77.0.2/24` (there is no
DHCP server). The driver takes one pair per online CPU: the plain scenario
boots 4 vCPUs (`cpus: 4 online`), the RSS one boots one and asks for 4
pairs with `net.pairs=4` (see tests/qemu/README.md).

From the host side of the tap, `net_mq_traffic.py` (run inside the namespace)
opens 8 echo connections at once; the Linux tun driver picks the receive
queue of each flow by its hash (and, later, by the queue the guest last sent
that flow on), so different connections arrive on different receive queues.

- `net-mq-tap-4pairs` (`-smp 4`): the card's `virtio:` line has `queues=9` (4 pairs and
  the control queue), the kernel prints `net0: 4 queue pairs in use (the
  device has 4), control queue 8` (so VQ_PAIRS_SET was acked); every echo
  connection gets its own bytes back; the guest's `/api/queues` shows
  packets (completions) on more than one receive queue.
- `net-mq-tap-4pairs-rss` (`-smp 1`, `net.pairs=4`): the same with QEMU's `rss=on`: NET_RSS is
  negotiated, the driver's RSS_CONFIG (hash key, indirection table) is acked
  (`net0: rss: flows spread by hash over 4 receive queues ...`), and QEMU
  (whose eBPF steering does not load here: it hashes in software) spreads
  the connections over the receive queues by hash.
- `bench-netscale-smoke-tcg`: a short boot of the network half of `x.py bench
  --section scale` (2 vCPUs, a card of 2 pairs on its own namespaced tap):
  the `netscale.setup` line and a frames/s figure are produced and parse into
  a `"scale"` entry (tests/qemu/bench_scale.py). Never judged.

Skipped, with one sentence, on a host without root, `ip`, /dev/net/tun or
network namespaces (harness `Scenario.requires`). The namespace's name holds
the runner's PID, and the namespace is deleted when the traffic is done (the
tap goes with QEMU). `TapNetwork` is also what `x.py bench --section scale`
boots its network rows on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from collections.abc import Iterable

from . import bench_compare, bench_scale
from . import machine as qm
from .harness import DEFAULT_FORBID, KILLED, Outcome, RunContext, Scenario

PAIRS = 4
CONNECTIONS = 8
HOST_ADDRESS = "10.77.0.1/24"
GUEST_ADDRESS = "10.77.0.2"
TAP = "vmqtap0"
TRAFFIC = Path(__file__).with_name("net_mq_traffic.py")


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class TapNetwork:
    """A network namespace holding a `multi_queue` tap of `queues` queues,
    with the host side address on it, for one boot (the scenario below, and
    `x.py bench --section scale`'s network rows)."""

    def __init__(self, label: str, queues: int) -> None:
        # The runner's PID in the name: two runs on one host do not collide.
        self.namespace = f"virtio-mq-{label}-{os.getpid()}"
        self.queues = queues

    def create(self) -> None:
        """The namespace, its tap and the host side address (a leftover of an
        interrupted run is removed first)."""
        ns = self.namespace
        _ip("netns", "del", ns)
        remove_orphans()
        steps = [
            ("netns", "add", ns),
            ("netns", "exec", ns, "ip", "link", "set", "lo", "up"),
            # QEMU opens a one-queue tap without IFF_MULTI_QUEUE, and the
            # kernel refuses that on a tap made with it (EINVAL).
            ("netns", "exec", ns, "ip", "tuntap", "add", "dev", TAP, "mode", "tap",
             *(["multi_queue"] if self.queues > 1 else [])),
            ("netns", "exec", ns, "ip", "addr", "add", HOST_ADDRESS, "dev", TAP),
            ("netns", "exec", ns, "ip", "link", "set", TAP, "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                raise RuntimeError(f"ip {' '.join(step)}: {done.stderr.strip()}")

    def delete(self) -> None:
        """Removes the namespace's name; the tap goes when QEMU exits."""
        _ip("netns", "del", self.namespace)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def wrap(self, ctx: RunContext) -> list[str]:
        """`Scenario.wrap`: makes the network, then QEMU runs inside it."""
        self.create()
        return self.exec_prefix()

    def device_args(self, rss: bool = False) -> list[str]:
        """The card: `queues` pairs, an MSI-X entry per queue plus config and
        control; with `rss`, QEMU's `rss=on` (VIRTIO_NET_F_RSS offered)."""
        return [
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,queues={self.queues},vhost=off",
            "-device", f"virtio-net-pci,netdev=n0,mq=on,vectors={2 * self.queues + 2},"
                       f"mac={qm.STANDARD_MAC},romfile={',rss=on' if rss else ''}",
        ]  # fmt: skip


def remove_orphans() -> None:
    """Deletes namespaces of earlier runs whose runner is gone (a boot that
    timed out never reached the step that deletes its namespace)."""
    listed = _ip("netns", "list")
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name.rsplit("-", 1)[-1]
        if name.startswith("virtio-mq-") and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", name)


_PROBE_LOCK = threading.Lock()
_probed: list[str | None] = []


def host_can_run() -> str | None:
    """None if this host can make a namespace with a multiqueue tap, else why
    not. Probed once per run (scenarios ask from parallel threads)."""
    with _PROBE_LOCK:
        if not _probed:
            _probed.append(_probe())
        return _probed[0]


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns and a tap device"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    probe = f"virtio-mq-probe-{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        tap = _ip("netns", "exec", probe, "ip", "tuntap", "add", "dev", TAP, "mode", "tap",
                  "multi_queue")
        if tap.returncode != 0:
            return f"no multiqueue tap in a namespace: {tap.stderr.strip()}"
    finally:
        _ip("netns", "del", probe)
    return None


NETWORK = TapNetwork("scenario", PAIRS)
RSS_NETWORK = TapNetwork("rss", PAIRS)


def traffic_on(network: TapNetwork):
    """The interaction: echo on several connections at once from inside
    `network`, then the queue counters; the namespace is deleted after."""

    def traffic(ctx: RunContext) -> list[str]:
        try:
            done = subprocess.run(
                [*network.exec_prefix(), sys.executable, str(TRAFFIC), GUEST_ADDRESS, str(CONNECTIONS)],
                capture_output=True, text=True, timeout=90)
        finally:
            network.delete()
        if done.returncode != 0:
            return [f"traffic helper failed ({done.returncode}): {done.stderr.strip()[-400:]}"]
        ctx.file("traffic.json").write_text(done.stdout)
        return judge(json.loads(done.stdout))

    return traffic


def tap_scenario(name: str, network: TapNetwork, rss: bool, cpus: int) -> Scenario:
    """4 pairs on `network`'s tap, echo traffic from the host side; with
    `rss`, QEMU offers RSS and the driver's hash configuration steers. With
    `cpus` vCPUs the driver takes one pair per CPU by itself; with one,
    `net.pairs=` asks for the 4."""
    steering = [rf"^net0: rss: flows spread by hash over {PAIRS} receive queues "] if rss else []
    pairs_knob = f" net.pairs={PAIRS}" if cpus < PAIRS else ""
    cpu_lines = [rf"^cpus: {cpus} online"] if cpus > 1 else []
    return Scenario(
        name=name,
        machine="q35",
        firmware="qboot",
        accel="tcg",
        wrap=network.wrap,
        devices=["-smp", str(cpus), *network.device_args(rss=rss)],
        append=f"net.ip={GUEST_ADDRESS}/24{pairs_knob}",
        requires=host_can_run,
        expect_status=KILLED,
        expect_in_order=[
            *cpu_lines,
            rf"^virtio: net at pci \S+ transport=pci-\S+ ring=split queues={2 * PAIRS + 1} "
            # With `rss`, NET_RSS must be among them as well (a lookahead).
            "features=" + (r"(?=\S*NET_RSS)" if rss else "") + r"\S*NET_MQ",
            rf"^net0: {PAIRS} queue pairs in use \(the device has {PAIRS}\), control queue {2 * PAIRS}$",
            *steering,
            rf"^net0: static: address {GUEST_ADDRESS}/24$",
            r"^kernel: ready$",
        ],
        forbid=[*DEFAULT_FORBID, *([] if rss else [r"^net0: rss: "])],
        interact=traffic_on(network),
        interact_after=r"(?m)^kernel: ready$",
        stop_after_interact=True,
        timeout_s=120.0,
    )


def judge(report: dict) -> list[str]:
    """Problems with what the traffic helper saw (pure: unit-tested)."""
    problems = []
    echoed = report.get("echo", [])
    if len(echoed) != CONNECTIONS:
        problems.append(f"{len(echoed)} echo results, expected {CONNECTIONS}")
    for i, result in enumerate(echoed):
        if not (isinstance(result, list) and result[0] is True):
            problems.append(f"connection {i}: echo wrong or failed: {result}")
    receive = {q["name"]: q["completions"] for q in report.get("queues", [])
               if q["name"].startswith("receiveq")}
    expected = {f"receiveq{n}" for n in range(1, PAIRS + 1)}
    if set(receive) != expected:
        problems.append(f"receive queues {sorted(receive)}, expected {sorted(expected)}")
    busy = [name for name, packets in receive.items() if packets > 0]
    if len(busy) < 2:
        problems.append(f"packets arrived on {busy or 'no queue'} only: {receive}")
    rows = [f"{q} {kind}" for p in range(PAIRS) for q, kind in ((2 * p, "rx"), (2 * p + 1, "tx"))]
    rows.append(f"{2 * PAIRS} ctrl")
    if "status_rows" in report and report["status_rows"] != rows:
        problems.append(f"status page queue rows {report['status_rows']}, expected {rows}")
    return problems


SMOKE_NETWORK = TapNetwork("smoke", 2)


def check_netscale_smoke(outcome: Outcome) -> Iterable[str]:
    """The boot produced a parsable `net.tx64` `"scale"` entry for a 2-pair card."""
    SMOKE_NETWORK.delete()
    setups, rows, errors, _ = bench_compare.parse_bench_lines(outcome.log_text)
    entry = bench_scale.entry(2, rows, setups.get("netscale.setup", {}), bench_scale.NET_WORKLOAD)
    problems = list(errors)
    if not isinstance(entry.get("median"), float) or entry["median"] <= 0:
        problems.append(f"no frames/s figure: {entry}")
    if entry.get("queues") != 2:
        problems.append(f"netscale.setup says pairs={entry.get('queues')}, the card has 2")
    problems.extend(pair_problems(outcome.log_text, cpus=2))
    return problems


PAIR_LINE = re.compile(r"^netscale: cpu (\d+) pair (\d+) pps=\S+ sent=(\d+) notifications=\d+ "
                       r"queue_interrupts=(\d+) cpu_interrupts=(\d+) irq_cpu=(\d+|none)$", re.M)


def pair_problems(log_text: str, cpus: int) -> list[str]:
    """Problems with the boot's `netscale: cpu N pair P` lines (pure: unit-tested):
    every CPU sent, each on its own pair, each pair's transmit queue's MSI-X
    message is addressed to its sending CPU (`irq_cpu`), and its interrupts
    arrived there (`queue_interrupts` at most that CPU's `cpu_interrupts`),
    with at least one CPU other than 0 interrupted."""
    lines = []
    for m in PAIR_LINE.finditer(log_text):
        *numbers, irq_cpu = m.groups()
        lines.append((*(int(g) for g in numbers), None if irq_cpu == "none" else int(irq_cpu)))
    problems = []
    if sorted(line[0] for line in lines) != list(range(cpus)):
        return [f"per-pair lines for cpus {sorted(line[0] for line in lines)}, expected 0..{cpus - 1}"]
    for cpu, pair, sent, queue_irqs, cpu_irqs, irq_cpu in lines:
        if irq_cpu != cpu:
            problems.append(f"pair {pair}: its transmit interrupts are addressed to cpu {irq_cpu}, not {cpu}")
        if pair != cpu:
            problems.append(f"cpu {cpu} sent on pair {pair}, not its own")
        if sent == 0:
            problems.append(f"cpu {cpu} sent nothing")
        if queue_irqs > cpu_irqs:
            problems.append(f"pair {pair}: {queue_irqs} transmit interrupts, but its cpu {cpu} took only "
                            f"{cpu_irqs}: they went elsewhere")
    if not any(min(line[3], line[4]) > 0 for line in lines if line[0] != 0):
        problems.append("no CPU other than 0 took a transmit interrupt of its pair")
    return problems


NET_MQ_SCENARIOS = [
    tap_scenario("net-mq-tap-4pairs", NETWORK, rss=False, cpus=4),
    tap_scenario("net-mq-tap-4pairs-rss", RSS_NETWORK, rss=True, cpus=1),
    Scenario(
        name="bench-netscale-smoke-tcg", machine="q35", accel="tcg", requires=host_can_run,
        wrap=SMOKE_NETWORK.wrap, devices=bench_scale.net_devices(2, SMOKE_NETWORK),
        append="mode=bench bench=netscale bench.seconds=0.02 bench.repeat=1 net.pairs=2",
        expect_status=qm.EXIT_SELFTEST_PASS,
        expect_in_order=[r"^bench: netscale\.setup cpus=\d+ pairs=2 active_pairs=2 ", r"^bench: done$"],
        timeout_s=60.0, check=check_netscale_smoke,
    ),
]  # fmt: skip
