"""Unit tests of the ours-vs-virtio-drivers summary (tests/qemu/bench_compare.py).

Rows are made by `parse_bench_lines` from `bench:` lines written here as
the kernel prints them, for the three sections that compare: blk
(`.poll` / `.irq` / `.peer`), net (`net.pps.poll` / `net.pps.peer`) and
console (`console.write` without a mode / `console.write.peer`). The console
file check is fed streams with a byte lost or changed in either stack's part.
"""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path

from . import bench_compare


def row(name: str, **fields: object) -> dict[str, object]:
    """The row `parse_bench_lines` makes of the kernel's line for these fields."""
    line = f"bench: {name} " + " ".join(f"{key}={value}" for key, value in fields.items())
    _, rows, errors, done = bench_compare.parse_bench_lines(f"noise\n{line}\nbench: done\n")
    assert not errors and done and len(rows) == 1, (line, rows, errors)
    return rows[0]


def net_rows() -> list[dict[str, object]]:
    rows = []
    for ours, peer in ((250000, 70000), (350000, 72000), (300000, 71000)):
        rows.append(row("net.pps.poll", stack="ours", rx_pps=ours, tx_pps=ours + 5,
                        tx_notifications_per_pkt=0.03))
        rows.append(row("net.pps.peer", stack="peer", rx_pps=peer, tx_pps=peer + 5,
                        tx_notifications_per_pkt=1.0))
    return rows


def console_rows(ours: list[float], peer: list[float], per_run: int = 1000) -> list[dict[str, object]]:
    rows = []
    for o, p in zip(ours, peer):
        rows.append(row("console.write", stack="ours", bytes=per_run, mb_per_s=o, notifications_per_chunk=0.9))
        rows.append(row("console.write.peer", stack="peer", bytes=per_run, mb_per_s=p,
                        notifications_per_chunk=1.0))
    return rows


def by_workload(summary: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(e["workload"]): e for e in summary}


class ParseTest(unittest.TestCase):
    def test_modes_stacks_and_setup_lines(self) -> None:
        log = ("kernel: booting\n"
               "bench: net.setup sender=net0 receiver=net1\n"
               "bench: net.pps.poll stack=ours rx_pps=250000 loss_pct=0.000\n"
               "bench: net.pps.peer stack=peer rx_pps=70000 tx_notifications_per_pkt=1.0000\n"
               "bench: console.write stack=ours bytes=1048576 mb_per_s=88.830\n"
               "bench: console.total stack=both bytes=2 fnv1a=0x00000000000000ff\n"
               "bench: error console: the peer failed\n")
        setups, rows, errors, done = bench_compare.parse_bench_lines(log)
        self.assertEqual(setups, {"net.setup": {"sender": "net0", "receiver": "net1"}})
        self.assertEqual([(r["workload"], r["mode"], r["driver"]) for r in rows],
                         [("net.pps", "poll", "ours"), ("net.pps", "peer", "virtio-drivers"),
                          ("console.write", "", "ours"), ("console.total", "", "ours")])
        self.assertEqual(rows[0]["rx_pps"], 250000)
        self.assertEqual(rows[2]["mb_per_s"], 88.83)
        self.assertEqual(rows[3]["fnv1a"], "0x00000000000000ff")
        self.assertEqual(errors, ["console: the peer failed"])
        self.assertFalse(done)


class SummarizeTest(unittest.TestCase):
    def test_net_is_judged_on_received_packets_and_ratio_is_ours_over_peer(self) -> None:
        entry = by_workload(bench_compare.summarize(net_rows()))["net.pps"]
        self.assertEqual(entry["unit"], "pps")
        self.assertEqual(entry["poll"]["median"], 300000)  # type: ignore[index]
        self.assertEqual(entry["peer"]["median"], 71000)  # type: ignore[index]
        self.assertEqual(entry["peer"]["min"], 70000)  # type: ignore[index]
        self.assertAlmostEqual(entry["ratio"], 300000 / 71000)  # type: ignore[arg-type]
        self.assertEqual(entry["peer"]["notify_per_unit"], 1.0)  # type: ignore[index]

    def test_console_ours_without_a_mode_is_compared_with_the_peer(self) -> None:
        rows = console_rows([90.0, 100.0, 110.0], [80.0, 85.0, 95.0])
        rows.append(row("console.total", stack="both", bytes=6000, fnv1a="0x0", ours_bytes=3000, peer_bytes=3000))
        summary = by_workload(bench_compare.summarize(rows))
        self.assertEqual(set(summary), {"console.write"})
        entry = summary["console.write"]
        self.assertEqual(entry["unit"], "MB/s")
        self.assertEqual(entry["ours"]["median"], 100.0)  # type: ignore[index]
        self.assertAlmostEqual(entry["ratio"], 100.0 / 85.0)  # type: ignore[arg-type]
        lines = bench_compare.table_lines([entry])
        self.assertIn("1.18", lines[2])
        self.assertIn("no polling mode", lines[2])
        self.assertIn("notify/chunk: ours 0.900, peer 1.000", lines[2])

    def test_rows_of_ours_without_a_peer_and_without_a_mode_stay_out(self) -> None:
        # The TCP echo rows have MB/s but nothing of virtio-drivers to compare with.
        rows = [row("net.echo", stack="ours", mb_per_s=5.0, bytes=1 << 20)]
        self.assertEqual(bench_compare.summarize(rows), [])

    def test_blk_still_prefers_our_polling_figure(self) -> None:
        rows = [row("blk.randread.qd1.poll", stack="ours", iops=30000, request_bytes=4096),
                row("blk.randread.qd1.irq", stack="ours", iops=20000, request_bytes=4096,
                    notifications_per_req=1.0, interrupts_per_req=1.0),
                row("blk.randread.qd1.peer", stack="peer", iops=15000, request_bytes=4096, depth=1, depth_wanted=1),
                row("blk.seqread.128k.poll", stack="ours", iops=1000, request_bytes=131072),
                row("blk.seqread.128k.peer", stack="peer", iops=500, request_bytes=131072, depth=8, depth_wanted=8)]
        summary = by_workload(bench_compare.summarize(rows))
        self.assertAlmostEqual(summary["blk.randread.qd1"]["ratio"], 2.0)  # type: ignore[arg-type]
        self.assertEqual(summary["blk.seqread.128k"]["unit"], "MB/s")
        self.assertAlmostEqual(summary["blk.seqread.128k"]["poll"]["median"], 131.072)  # type: ignore[index]
        self.assertAlmostEqual(summary["blk.seqread.128k"]["ratio"], 2.0)  # type: ignore[arg-type]

    def test_all_three_sections_land_in_one_table_markdown_and_svg(self) -> None:
        rows = [row("blk.randread.qd1.poll", stack="ours", iops=30000, request_bytes=4096),
                row("blk.randread.qd1.peer", stack="peer", iops=15000, request_bytes=4096),
                *net_rows(), *console_rows([100.0], [50.0])]
        summary = bench_compare.summarize(rows)
        self.assertEqual([e["workload"] for e in summary], ["blk.randread.qd1", "net.pps", "console.write"])
        markdown = bench_compare.markdown_table(summary)
        self.assertEqual(len(markdown.splitlines()), 2 + 3)
        with tempfile.TemporaryDirectory() as tmp:
            svg = Path(tmp) / "ratios.svg"
            bench_compare.write_svg(summary, svg, "test")
            text = svg.read_text()
        for name in ("blk.randread.qd1", "net.pps", "console.write"):
            self.assertIn(f">{name}</text>", text)
        self.assertIn(">2.00</text>", text)

    def test_boot_rows_become_entries_with_their_own_figure_and_note(self) -> None:
        rows = [{"name": "boot.q35", "workload": "boot.q35", "mode": "boot", "wall_ms": w} for w in (300.0, 200.0)]
        rows += [{"name": "boot.microvm.ready", "workload": "boot.microvm.ready", "mode": "boot-ready",
                  "wall_ms": 999.0, "first_line_to_ready_ms": r, "first_line_to_ready_cpu_ms": r / 2}
                 for r in (18.5, 17.25, 30.0)]
        rows.append({"name": "blk.x", "workload": "blk.x", "mode": "poll", "wall_ms": 5.0})
        summary = by_workload(bench_compare.boot_summary(rows))
        self.assertEqual(sorted(summary), ["boot.microvm.ready", "boot.microvm.ready.cpu", "boot.q35"])
        self.assertEqual(summary["boot.microvm.ready.cpu"]["boot"]["median"], 9.25)  # type: ignore[index]
        self.assertEqual(summary["boot.q35"]["boot"]["median"], 250.0)  # type: ignore[index]
        self.assertEqual(summary["boot.microvm.ready"]["boot"],  # type: ignore[index]
                         {"min": 17.25, "median": 18.5, "max": 30.0, "runs": 3})
        lines = "\n".join(bench_compare.table_lines(list(summary.values())))
        self.assertIn("18.5 [17.2-30.0]", lines)
        self.assertIn("first serial line to kernel: ready", lines)
        self.assertIn("QEMU start to all devices ready", lines)


class ConsoleFileTest(unittest.TestCase):
    PER_RUN = 1000

    def stream(self) -> tuple[bytes, list[dict[str, object]]]:
        rows = console_rows([1.0, 1.0], [1.0, 1.0], per_run=self.PER_RUN)
        length = 4 * self.PER_RUN
        data = (bytes(range(251)) * (length // 251 + 1))[:length]
        rows.append(row("console.total", stack="both", bytes=length, fnv1a=f"0x{bench_compare.fnv1a64(data):016x}",
                        ours_bytes=2 * self.PER_RUN, peer_bytes=2 * self.PER_RUN))
        return data, rows

    def test_the_whole_stream_passes(self) -> None:
        data, rows = self.stream()
        self.assertEqual(bench_compare.check_console_file(data, rows), [])

    def test_a_byte_lost_in_the_peers_part_fails_and_says_where(self) -> None:
        data, rows = self.stream()
        # Bytes 1000..2000 are the peer's first run.
        broken = data[:1500] + data[1501:]
        problems = bench_compare.check_console_file(broken, rows)
        self.assertEqual(len(problems), 1)
        self.assertIn("first wrong or missing byte at 1500", problems[0])
        self.assertIn("in a run of peer (bytes 1000..2000)", problems[0])

    def test_a_byte_changed_in_our_part_fails(self) -> None:
        data, rows = self.stream()
        broken = bytearray(data)
        broken[2500] ^= 0xFF
        problems = bench_compare.check_console_file(bytes(broken), rows)
        self.assertEqual(len(problems), 1)
        self.assertIn("in a run of ours (bytes 2000..3000)", problems[0])

    def test_the_last_run_missing_fails(self) -> None:
        data, rows = self.stream()
        problems = bench_compare.check_console_file(data[:3 * self.PER_RUN], rows)
        self.assertEqual(len(problems), 1)
        self.assertIn("holds 3000 bytes", problems[0])

    def test_a_total_that_disagrees_with_the_runs_fails(self) -> None:
        data, rows = self.stream()
        rows[-1]["peer_bytes"] = 1000
        problems = bench_compare.check_console_file(data, rows)
        self.assertTrue(any("peer_bytes=1000" in p for p in problems), problems)

    def test_no_total_line_fails(self) -> None:
        data, rows = self.stream()
        self.assertTrue(bench_compare.check_console_file(data, rows[:-1]))


if __name__ == "__main__":
    unittest.main()
