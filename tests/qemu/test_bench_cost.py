"""Unit tests of the cost and net-host sections' arithmetic and of results.json merging."""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

from qemu import bench_compare, bench_cost, bench_net_host, bench_results

LOG = """\
bench: blk.randread.qd1.irq stack=ours iops=1 notifications_per_req=1.000 interrupts_per_req=0.500 halts_per_req=0.250 spun_per_req=0.250 turn_ticks_per_req=1210.0 busy_ticks_per_req=2000.0 requests=10
bench: blk.randread.qd1.poll stack=ours iops=1 notifications_per_req=1.000 interrupts_per_req=0.000 turn_ticks_per_req=1200.0 busy_ticks_per_req=5000.0 requests=10
bench: blk.randread.qd1.poll stack=ours iops=1 notifications_per_req=1.000 interrupts_per_req=0.000 turn_ticks_per_req=1000.0 busy_ticks_per_req=5000.0 requests=10
bench: blk.randread.qd1.peer stack=peer iops=1 turn_ticks_per_req=1250.0 requests=10
bench: net.pps.poll stack=ours tx_pps=1 rx_pps=1 sent=5 tx_notifications_per_pkt=0.0300 rx_interrupts_per_pkt=0.0000 ticks_per_pkt=1600.0
bench: net.pps.peer stack=peer tx_pps=1 rx_pps=1 sent=5 tx_notifications_per_pkt=1.0000 ticks_per_pkt=6400.0
bench: done
"""


class CostTest(unittest.TestCase):
    def test_entries_take_the_median_and_pair_ours_with_the_peer(self) -> None:
        _, rows, errors, done = bench_compare.parse_bench_lines(LOG)
        self.assertTrue(done)
        self.assertEqual(errors, [])
        entries = {e["workload"]: e for e in bench_cost.cost_entries(rows)}
        read = entries["blk.randread.qd1"]
        self.assertEqual(read["ours"], 1100.0)  # median of 1200 and 1000
        self.assertEqual(read["peer"], 1250.0)
        self.assertAlmostEqual(read["ratio"], 1100.0 / 1250.0)
        self.assertEqual(read["ours_irq"], 2000.0)
        self.assertEqual(read["interrupts_per_req"], 0.5)
        self.assertEqual(read["unit"], "instructions/request")
        self.assertNotIn("blk.randwrite.qd1", entries, "no rows, no entry")
        frame = entries["net.pps.64b"]
        self.assertEqual((frame["ours"], frame["peer"], frame["unit"]), (1600.0, 6400.0, "instructions/frame"))
        bars = bench_cost.plot_entries(list(entries.values()))
        self.assertEqual([round(float(b["ratio"]), 3) for b in bars], [round(1250 / 1100, 3), 4.0])

    def test_table_has_a_row_per_entry(self) -> None:
        _, rows, _, _ = bench_compare.parse_bench_lines(LOG)
        lines = bench_cost.table_lines(bench_cost.cost_entries(rows))
        self.assertEqual(len(lines), 2 + 2)
        self.assertIn("| `blk.randread.qd1` | instructions/request | 1100 | 1250 | 0.88 |", lines[2])


class NetHostTest(unittest.TestCase):
    def test_record_puts_ours_beside_linux_with_ratios_that_say_better(self) -> None:
        out = {"echo_mb_per_s_runs": [10.0, 30.0, 20.0], "http_requests": 1000, "http_seconds": 5.0,
               "ping_ms_runs": [2.0, 0.5, 0.4]}
        record = bench_net_host.record(out, "tcg", [1.0], [2.0], 3, 4 << 20, 5.0)
        rows = {r["workload"]: r for r in record["net_host"]}
        self.assertEqual(rows["net-host.echo"]["ours"], 20.0)
        self.assertAlmostEqual(rows["net-host.echo"]["ratio"], 20.0 / 17.3)
        self.assertEqual(rows["net-host.http"]["ours"], 200.0)
        self.assertAlmostEqual(rows["net-host.ping"]["ratio"], 1.18 / 0.5, msg="lower is better: Linux / ours")
        self.assertEqual(len(bench_net_host.plot_entries(record["net_host"])), 3)

    def test_nothing_measured_gives_no_ratio(self) -> None:
        record = bench_net_host.record({}, "tcg", [], [], 1, 1, 1.0)
        self.assertTrue(all(r["ratio"] is None for r in record["net_host"]))
        self.assertEqual(bench_net_host.plot_entries(record["net_host"]), [])


class MergeTest(unittest.TestCase):
    def test_a_run_of_one_section_keeps_the_others(self) -> None:
        blk = {"when": "t1", "accel": "tcg", "comparison": [{"workload": "blk.x", "unit": "IOPS", "ratio": 1.5}], "ring": [],
               "cost": [], "net_host": []}
        first = bench_results.merge({}, {"blk": blk}, {"when": "t1"})
        ring = {"when": "t2", "accel": "tcg", "comparison": [],
                "ring": [{"workload": "blk.y", "mode": "poll", "ratio": 0.9}], "cost": [], "net_host": []}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            path.write_text(json.dumps(first))
            second = bench_results.merge(bench_results.load(path), {"ring": ring}, {"when": "t2"})
        self.assertEqual(second["sections"], ["blk", "ring"])
        self.assertEqual(second["sections_this_run"], ["ring"])
        self.assertEqual(second["comparison"], blk["comparison"], "the comparison survives a ring-only run")
        self.assertEqual(len(second["ring"]), 1)
        self.assertEqual(second["latest"]["blk"]["when"], "t1")
        names = [b["workload"] for b in bench_results.plot_entries(second)]
        self.assertEqual(names, ["blk.x", "packed/split blk.y.poll"])

    def test_an_old_or_broken_results_file_starts_afresh(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            self.assertEqual(bench_results.load(path), {})
            path.write_text("{not json")
            self.assertEqual(bench_results.load(path), {})
            path.write_text(json.dumps({"comparison": []}))  # before sections were kept apart
            self.assertEqual(bench_results.load(path), {})

    def test_missing_sections_names_those_never_run(self) -> None:
        results = {"latest": {"blk": {}, "scale": {}}}
        self.assertEqual(bench_results.missing_sections(results, ["blk", "net", "scale", "iommu"]), ["net", "iommu"])
        self.assertEqual(bench_results.missing_sections({}, ["blk"]), ["blk"])
        self.assertEqual(bench_results.missing_sections(results, ["scale"]), [])


if __name__ == "__main__":
    unittest.main()
