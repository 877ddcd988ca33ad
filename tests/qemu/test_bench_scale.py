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
        self.assertIn("| IOPS |", lines[3])
        self.assertTrue(lines[4].endswith("| - |"))

    def test_net_rows_are_judged_by_their_own_figure_and_baseline(self) -> None:
        def net(pps: float) -> dict[str, object]:
            return {"name": "net.tx64.irq", "workload": "net.tx64", "mode": "irq", "pps": pps}

        blk1 = bench_scale.entry(1, [row(100.0)], {})
        net1 = bench_scale.entry(1, [net(50.0), net(70.0), net(60.0), row(1e9)],
                                 {"cpus": "1", "pairs": "1", "submitting_cpus": "1"}, bench_scale.NET_WORKLOAD)
        net2 = bench_scale.entry(2, [net(90.0)], {"pairs": "2"}, bench_scale.NET_WORKLOAD)
        self.assertEqual((net1["median"], net1["unit"], net1["queues"]), (60.0, "frames/s", 1))
        entries = bench_scale.with_speedup([blk1, net1, net2])
        self.assertEqual([e["speedup"] for e in entries], [1.0, 1.0, 1.5])
        self.assertIn("| frames/s |", bench_scale.table_lines(entries)[4])

    def test_each_net_boot_asks_for_its_cpus_and_a_card_of_as_many_pairs(self) -> None:
        class Network:
            def device_args(self) -> list[str]:
                return ["-netdev", "tap,queues=2", "-device", "virtio-net-pci,mq=on"]

        args = bench_scale.net_devices(2, Network())(None)  # type: ignore[arg-type]
        self.assertEqual(args[:2], ["-smp", "2"])
        self.assertIn("virtio-net-pci,mq=on", args)

    def test_each_boot_asks_for_its_cpus_and_queues(self) -> None:
        args = bench_scale.devices(4)(None)  # type: ignore[arg-type]
        self.assertEqual(args[:2], ["-smp", "4"])
        self.assertIn("num-queues=4", args[-1])


if __name__ == "__main__":
    unittest.main()
