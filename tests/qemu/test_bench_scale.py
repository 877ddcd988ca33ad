"""Unit tests of tests/qemu/bench_scale.py (the scale section's table)."""

import unittest

from . import bench_scale


def row(iops: float, mode: str = "irq") -> dict[str, object]:
    return {"name": f"{bench_scale.WORKLOAD}.{mode}", "workload": bench_scale.WORKLOAD, "mode": mode, "iops": iops}


class BenchScaleTest(unittest.TestCase):
    def test_entry_takes_the_median_of_irq_rows(self) -> None:
        e = bench_scale.entry(2, [row(300.0), row(100.0), row(200.0), row(9e9, "poll")],
                              {"cpus": "2", "queues": "2", "submitting_cpus": "1"})
        self.assertEqual((e["median"], e["min"], e["max"], e["runs"]), (200.0, 100.0, 300.0, 3))
        self.assertEqual((e["online_cpus"], e["queues"], e["submitting_cpus"]), (2, 2, 1))

    def test_no_rows_gives_no_median(self) -> None:
        self.assertIsNone(bench_scale.entry(4, [], {})["median"])

    def test_speedup_is_relative_to_one_cpu(self) -> None:
        entries = bench_scale.with_speedup([bench_scale.entry(1, [row(100.0)], {}),
                                            bench_scale.entry(2, [row(160.0)], {}),
                                            bench_scale.entry(4, [], {})])
        self.assertEqual([e["speedup"] for e in entries], [1.0, 1.6, None])
        lines = bench_scale.table_lines(entries)
        self.assertIn("1.60x", lines[3])
        self.assertTrue(lines[4].endswith("| - |"))

    def test_each_boot_asks_for_its_cpus_and_queues(self) -> None:
        args = bench_scale.devices(4)(None)  # type: ignore[arg-type]
        self.assertEqual(args[:2], ["-smp", "4"])
        self.assertIn("num-queues=4", args[-1])


if __name__ == "__main__":
    unittest.main()
