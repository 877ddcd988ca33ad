"""Unit tests of bench_page.py: the page shows the run and its tables, the prose no figures."""

import json
import re
import tempfile
import unittest
from pathlib import Path

from book import bench_page

RESULTS = {
    "when": "2026-12-07T15:23:55+0000",
    "host": "Test CPU, 2 CPUs, load average 1.0, 1.0, 1.0 at the end",
    "accel": "tcg",
    "command": "./x.py bench --section blk",
    "runs_per_workload": 3,
    "seconds_per_run": 1.0,
    "comparison": [{"workload": "blk.randread.qd1"}],
    "markdown": "| workload | ratio |\n| --- | --- |\n| `blk.randread.qd1` | 0.87 |",
    "sections": ["blk"],
    "ring": [],
    "ring_markdown": "",
}


class BenchPageTest(unittest.TestCase):
    def test_the_page_carries_the_run_and_its_table(self) -> None:
        page = bench_page.render(RESULTS, "plot.svg")
        for expected in ("2026-12-07T15:23:55+0000", "Test CPU", "| accelerator | tcg |",
                         "`./x.py bench --section blk`", "| `blk.randread.qd1` | 0.87 |", "](plot.svg)"):
            self.assertIn(expected, page)
        self.assertNotIn("Split against packed", page)

    def test_ring_table_and_no_comparison(self) -> None:
        results = dict(RESULTS, markdown="", comparison=[], ring_markdown="| ring | x |\n| --- | --- |")
        page = bench_page.render(results, None)
        self.assertIn("Split against packed", page)
        self.assertIn("compared nothing", page)
        self.assertNotIn(".svg", page)

    def test_iommu_table(self) -> None:
        results = dict(RESULTS, iommu_markdown="| workload | unit |\n| --- | --- |")
        page = bench_page.render(results, None)
        self.assertIn("Strict IOMMU against none", page)
        self.assertNotIn("Strict IOMMU", bench_page.render(RESULTS, None))

    def test_the_method_names_no_figures(self) -> None:
        prose = re.sub(r"\]\([^)]*\)", "]", bench_page.METHOD.replace("§3.1.1", ""))
        self.assertIsNone(re.search(r"\d", prose),
                          "a number in the prose can contradict the tables")

    def test_write_page_copies_the_plot(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "results.json").write_text(json.dumps(RESULTS))
            (root / "ratios.svg").write_text("<svg/>")
            page = bench_page.write_page(root / "results.json", root / "ratios.svg", root / "page.md",
                                         root / "page.svg")
            self.assertIn("](page.svg)", page.read_text())
            self.assertEqual((root / "page.svg").read_text(), "<svg/>")


class ReadmeTableTest(unittest.TestCase):
    RESULTS = dict(RESULTS, comparison=[
        {"workload": "blk.randread.qd32", "unit": "IOPS", "poll": {"median": 184507.0},
         "peer": {"median": 79384.0, "depth": 16, "depth_wanted": 32}, "ratio": 2.324},
        {"workload": "console.write", "unit": "MB/s", "poll": {"median": 0.047},
         "peer": {"median": 0.052}, "ratio": 0.9},
        {"workload": "boot.q35", "unit": "ms", "boot": {"median": 285.0}},
    ])

    def test_rows_of_compared_workloads_only(self) -> None:
        lines = bench_page.ratio_lines(self.RESULTS)
        self.assertIn("| `blk.randread.qd32` | IOPS | 184507 | 79384 | 2.32 (peer at depth 16) |", lines)
        self.assertIn("| `console.write` | MB/s | 0.047 | 0.052 | 0.90 |", lines)
        self.assertFalse(any("boot.q35" in line for line in lines))
        self.assertIn("load average 1.0", lines[-1])

    def test_update_readme_rewrites_between_the_markers_only(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "results.json").write_text(json.dumps(self.RESULTS))
            readme = root / "README.md"
            readme.write_text(f"top\n{bench_page.README_BEGIN}\nold table\n{bench_page.README_END}\nbottom\n")
            self.assertTrue(bench_page.update_readme(root / "results.json", readme))
            text = readme.read_text()
            self.assertTrue(text.startswith("top\n") and text.endswith("bottom\n"))
            self.assertNotIn("old table", text)
            self.assertIn("2.32 (peer at depth 16)", text)
            readme.write_text("no markers\n")
            self.assertFalse(bench_page.update_readme(root / "results.json", readme))


if __name__ == "__main__":
    unittest.main()
