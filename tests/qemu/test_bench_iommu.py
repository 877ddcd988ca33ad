"""Unit tests of the `x.py bench --section iommu` table (bench_iommu.py)."""

from __future__ import annotations

import unittest

from qemu import bench_compare, bench_iommu

STRICT_LOG = """\
bench: iommu.setup iommu=strict active=strict
bench: blk.randread.qd1.irq stack=ours iops=25369 requests=25442 seconds=1.003
bench: blk.randread.qd1.shared.irq stack=ours iommu=strict iops=19836 pages_mapped_per_req=2.000 invalidations_per_req=1.000
bench: iommu.share_unshare_4k.poll stack=ours iommu=strict ns_per_pair=1096 invalidations_per_pair=1.000 pairs=20000
bench: done
"""
NONE_LOG = """\
bench: iommu.setup iommu=none active=none
bench: blk.randread.qd1.irq stack=ours iops=40771 requests=40774 seconds=1.000
bench: blk.randread.qd1.shared.irq stack=ours iommu=none iops=22414 pages_mapped_per_req=0.000 invalidations_per_req=0.000
bench: iommu.share_unshare_4k.poll stack=ours iommu=none ns_per_pair=270 invalidations_per_pair=0.000 pairs=20000
bench: done
"""


class IommuTableTest(unittest.TestCase):
    def test_rows_side_by_side(self) -> None:
        _, strict, _, _ = bench_compare.parse_bench_lines(STRICT_LOG)
        _, none, _, _ = bench_compare.parse_bench_lines(NONE_LOG)
        table = {r["workload"]: r for r in bench_iommu.side_by_side(strict, none)}
        self.assertEqual(set(table), {"blk.randread.qd1.irq", "blk.randread.qd1.shared.irq",
                                      "iommu.share_unshare_4k.poll"})
        self.assertAlmostEqual(table["blk.randread.qd1.irq"]["ratio"], 25369 / 40771)  # type: ignore[arg-type]
        self.assertEqual(table["iommu.share_unshare_4k.poll"]["unit"], "ns/pair")
        self.assertEqual(table["iommu.share_unshare_4k.poll"]["invalidations_per_req"], 1.0)
        self.assertEqual(table["blk.randread.qd1.shared.irq"]["pages_mapped_per_req"], 2.0)
        lines = bench_iommu.table_lines(list(table.values()))
        self.assertTrue(lines[0].startswith("| workload |"))
        self.assertIn("| blk.randread.qd1.irq | IOPS | 25369 | 40771 | 0.62 |", "\n".join(lines))

    def test_a_row_missing_from_one_boot_is_left_out(self) -> None:
        _, strict, _, _ = bench_compare.parse_bench_lines(STRICT_LOG)
        self.assertEqual(bench_iommu.side_by_side(strict, []), [])

    def test_devices_put_the_iommu_first(self) -> None:
        with_iommu = bench_iommu.devices(True)(None)  # type: ignore[arg-type]
        self.assertEqual(with_iommu[:2], ["-device", "intel-iommu"])
        self.assertTrue(any("iommu_platform=on" in a for a in with_iommu))
        self.assertNotIn("intel-iommu", bench_iommu.devices(False)(None))  # type: ignore[arg-type]


if __name__ == "__main__":
    unittest.main()
