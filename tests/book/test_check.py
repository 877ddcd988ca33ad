"""Unit tests of check.py: each rule finds what it should, and only that."""

import tempfile
import unittest
from pathlib import Path

from book import check

SOURCE = '''
pub struct SplitQueue<H> { pub size: u16 }
pub enum RingLayout {
    Separate,
    Legacy(u32),
}
impl<H> SplitQueue<H> { pub fn pop_used(&mut self) {} }
pub const RESET_POLL_LIMIT: u32 = 1;
global_asm!(
    "pvh_start32:",
);
'''


def repository(root: Path) -> check.Repository:
    files = ["drivers/src/queue/split.rs", "drivers/src/lib.rs", "x.py", "docs/01-boot.md",
             "docs/02-transports.md"]
    return check.Repository(root, files, check.definitions_in(SOURCE, ".rs") | {"cmd_test"})


class CheckDocumentTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        (self.root / "docs").mkdir()
        (self.root / "drivers/src/queue").mkdir(parents=True)
        (self.root / "drivers/src/queue/split.rs").write_text("// ANCHOR: add\nfn add() {}\n// ANCHOR_END: add\n")
        (self.root / "docs/02-transports.md").write_text("# Transports\n\n## The status byte\n")
        self.repo = repository(self.root)

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def problems(self, text: str, not_code: set[str] = frozenset()) -> list[str]:
        return [p.what for p in check.check_document("docs/01-boot.md", text, self.repo, set(not_code))]

    def test_existing_paths_symbols_links_and_includes_pass(self) -> None:
        text = ("Open `drivers/src/queue/split.rs` (or `queue/split.rs`, `split.rs`, `drivers/`) and "
                "`x.py`: `SplitQueue<H>`, `SplitQueue::pop_used`, `pop_used()`, `RingLayout::Separate`, "
                "`RESET_POLL_LIMIT`, `pvh_start32`, `cmd_test`, `size`.\n"
                "See [the status byte](02-transports.md#the-status-byte).\n"
                "```rust\n{{#include ../drivers/src/queue/split.rs:add}}\n```\n"
                "Generated: `build/kernel.elf`, `/dev/kvm`, `core::ptr::NonNull`, `mode=selftest`, "
                "`--filter`, `log=trace`, `VIRTIO_F_VERSION_1`.\n")
        self.assertEqual(self.problems(text, {"VIRTIO_F_VERSION_1"}), [])

    def test_a_renamed_file_is_found(self) -> None:
        found = self.problems("See `drivers/src/queue/splt.rs` and `queue/gone.rs`.")
        self.assertEqual(len(found), 2, found)
        self.assertIn("drivers/src/queue/splt.rs", found[0])

    def test_a_renamed_symbol_is_found(self) -> None:
        for span in ("`SplitQueu`", "`SplitQueue::pop_usd`", "`pop_usd()`", "`RESET_LIMIT`",
                     "`read_blocks`", "`RingLayout::Packed`"):
            with self.subTest(span=span):
                found = self.problems(f"The code: {span}.")
                self.assertEqual(len(found), 1, found)
                self.assertIn("no code defines", found[0])

    def test_names_outside_the_code_can_be_listed(self) -> None:
        self.assertEqual(self.problems("`QueuePFN`", {"QueuePFN"}), [])
        self.assertEqual(len(self.problems("`QueuePFN`")), 1)

    def test_code_fences_are_not_checked_but_their_includes_are(self) -> None:
        self.assertEqual(self.problems("```text\n`NoSuchThing` 1.2 gone.rs\n```\n"), [])
        found = self.problems("```rust\n{{#include ../drivers/src/queue/split.rs:remove}}\n```\n")
        self.assertEqual(len(found), 1)
        self.assertIn("missing anchor", found[0])
        found = self.problems("```rust\n{{#include ../drivers/src/queue/missing.rs}}\n```\n")
        self.assertIn("missing file", found[0])

    def test_links_to_missing_files_and_headings_are_found(self) -> None:
        self.assertIn("missing file", self.problems("[x](03-nothing.md)")[0])
        self.assertIn("missing heading", self.problems("[x](02-transports.md#no-such-heading)")[0])
        self.assertEqual(self.problems("[x](https://example.org/a.md) [y](02-transports.md)"), [])

    def test_hand_numbered_headings_are_found(self) -> None:
        self.assertEqual(len(self.problems("## 3.2 One request\n# 6. The console\n")), 2)
        self.assertEqual(self.problems("## One request\n"), [])

    def test_own_fragments(self) -> None:
        found = check.check_own_fragments("a.md", "# Top\n## Two words\n[a](#two-words) [b](#three)\n")
        self.assertEqual([p.what for p in found], ["link to a missing heading: #three"])


class HeadingIdTest(unittest.TestCase):
    def test_mdbook_ids(self) -> None:
        self.assertEqual(check.heading_id("Notification suppression, both directions"),
                         "notification-suppression-both-directions")
        self.assertEqual(check.heading_id("`pvh_start32`: into long mode"), "pvh_start32-into-long-mode")
        self.assertEqual(check.heading_ids("# A\n## A\n"), {"a", "a-1"})


class WholeRepositoryTest(unittest.TestCase):
    def test_the_book_and_readme_pass(self) -> None:
        problems = check.check_all()
        self.assertEqual([str(p) for p in problems], [])


if __name__ == "__main__":
    unittest.main()
