"""Docs stay true: every path, code symbol, link and include that the book and README name exists.

Run from the repository (or through `./x.py test --filter docs`):

    python3 tests/book/check.py          # prints each problem as file:line: what, exits 1 if any

What is checked, in README.md, docs/*.md and tests/qemu/README.md, outside fenced code blocks:

- **paths** in `code spans`: a span that looks like a file or directory (has a `/` or ends in a
  known extension) must exist. One that starts with a top-level entry (`drivers/src/lib.rs`,
  `x.py`) is taken from the repository root; a shorter one (`net/buffers.rs`, `logger.rs`) must be
  the tail of some file's path. Generated places (`build/`, `target/`), absolute host paths and
  placeholders (`<name>`, `*`) are left alone.
- **code symbols** in `code spans`: `CamelCase` names, `snake_case` names with an underscore,
  `SCREAMING_CASE` names, `a::b::c` paths and `call()`s must be defined somewhere in the Rust or
  Python sources (a `fn`, `struct`, `enum` variant, field, `const`, `def`, `class`, assignment,
  assembly label, ...). Names of outside crates (`core::`, `smoltcp::`, ...) are skipped. Names that
  belong to the specification or to QEMU, not to this code, are listed in `not_code.txt` beside
  this file.
- **links** `[text](target)` to files in the repository, and `#fragment`s to headings of a
  Markdown file (mdBook's heading ids).
- **includes** `{{#include path[:anchor]}}` (also inside code fences): the file exists and has
  `ANCHOR: anchor`.
- **headings** carry no hand-written chapter numbers (`## 3.2 ...`): mdBook numbers the chapters.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Documents checked, relative to the repository (globs).
DOCUMENTS = ("README.md", "docs/*.md", "tests/qemu/README.md")
#: Sources whose definitions count as code symbols.
SOURCE_GLOBS = ("hal/**/*.rs", "drivers/**/*.rs", "kernel/**/*.rs", "tests/**/*.rs", "x.py",
                "tests/**/*.py", "kernel/*.ld", "**/Cargo.toml")
#: Extensions that make a code span a path.
PATH_EXTENSIONS = (".rs", ".py", ".md", ".toml", ".ld", ".json", ".svg", ".txt", ".sh", ".lock",
                   ".log", ".yml")
#: First path components that are generated or not in the repository.
NOT_IN_REPO = ("build/", "target/", "/", "~", "$")
#: Crates and languages outside this repository: their paths are not checked.
EXTERNAL_CRATES = {"core", "alloc", "std", "virtio_drivers", "smoltcp", "x86_64", "spin", "log",
                   "vm_memory", "virtio_queue", "bitflags", "volatile", "acpi",
                   "linked_list_allocator", "zerocopy", "cargo", "rustc", "os", "re", "json"}

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INCLUDE = re.compile(r"\{\{#(?:include|rustdoc_include)\s+([^}\s]+)\s*\}\}")
NUMBERED_HEADING = re.compile(r"^#+\s+\d+(\.\d+)*\.?\s")
HEADING = re.compile(r"^(#+)\s+(.*?)\s*#*\s*$")

CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$")
SNAKE = re.compile(r"^_?[a-z][a-z0-9]*(_[a-z0-9]+)+$")
SCREAMING = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
RUST_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)+$")
CALL = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*(?:::|\.))*([A-Za-z_][A-Za-z0-9_]*)!?\(\)$")

RUST_DEFINITION = re.compile(
    r"\b(?:fn|struct|enum|trait|type|const|static|mod|union|macro_rules!)\s+(?:r#)?([A-Za-z_]\w*)")
FIELD_OR_VARIANT = re.compile(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?([A-Za-z_]\w*)\s*(?::[^:]|[,({=]|$)")
PY_DEFINITION = re.compile(r"^\s*(?:def|class)\s+([A-Za-z_]\w*)|^\s*(?:self\.)?([A-Za-z_]\w*)\s*(?::[^=\n]*)?=[^=]")
PY_FIELD = re.compile(r"^\s+([A-Za-z_]\w*)\s*:")
ASM_LABEL = re.compile(r"^\s*\"?\.?([A-Za-z_]\w*):")
TOML_KEY = re.compile(r"^\s*\[?([A-Za-z_][\w-]*)\]?\s*=?")


@dataclass(frozen=True)
class Problem:
    """One thing a document names that is not there."""

    document: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.what}"


class Repository:
    """The files and defined names of a checkout."""

    def __init__(self, root: Path, files: Iterable[str], definitions: set[str]) -> None:
        self.root = root
        self.files = set(files)
        self.dirs = {str(Path(f).parent) for f in self.files}
        for d in list(self.dirs):
            parts = Path(d).parts
            self.dirs.update(str(Path(*parts[:i])) for i in range(1, len(parts)))
        self.top_level = {Path(f).parts[0] for f in self.files}
        self.definitions = definitions

    @classmethod
    def scan(cls, root: Path = REPO) -> "Repository":
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.split("\n")
        files = [f for f in listed if f and (root / f).exists()]
        definitions: set[str] = set()
        seen: set[Path] = set()
        for pattern in SOURCE_GLOBS:
            for path in root.glob(pattern):
                relative = path.relative_to(root)
                if path in seen or relative.parts[0] in ("target", "build") or not path.is_file():
                    continue
                seen.add(path)
                definitions |= definitions_in(path.read_text(errors="replace"), path.suffix)
        return cls(root, files, definitions)

    def path_exists(self, path: str) -> bool:
        path = path.rstrip("/")
        if path in self.files or path in self.dirs:
            return True
        if Path(path).parts[0] in self.top_level:
            return False
        tail = "/" + path
        return any(f.endswith(tail) for f in self.files) or any(d.endswith(tail) for d in self.dirs)


def definitions_in(text: str, suffix: str) -> set[str]:
    """Names a source file defines (generously: fields, variants and labels count)."""
    names = set(RUST_DEFINITION.findall(text)) if suffix == ".rs" else set()
    # Keys of the lines the kernel prints (`bench: ... iops={iops}`) are names a reader looks up too.
    names.update(re.findall(r"\b([a-z][a-z0-9_]*)=\{", text))
    if suffix == ".rs":
        # Parameters and bindings (`fn new(timeout_ns: u64)`): a reader meets them in signatures.
        names.update(re.findall(r"(?<![:\w])([a-z_]\w*)\s*:(?!:)", text))
    for line in text.splitlines():
        if suffix == ".rs":
            names.update(m.group(1) for m in [FIELD_OR_VARIANT.match(line), ASM_LABEL.match(line)] if m)
        elif suffix == ".py":
            m = PY_DEFINITION.match(line)
            if m:
                names.add(m.group(1) or m.group(2))
            m = PY_FIELD.match(line)
            if m:
                names.add(m.group(1))
        elif suffix in (".ld", ".toml"):
            m = TOML_KEY.match(line) if suffix == ".toml" else re.match(r"^\s*([A-Za-z_]\w*)\s*=", line)
            if m:
                names.add(m.group(1))
            names.update(re.findall(r"\b([A-Za-z_]\w*)\s*=", line))
    return names


def heading_id(text: str) -> str:
    """The id mdBook gives a heading: lower case, spaces to '-', only letters, digits, '-' and '_'."""
    text = re.sub(r"`|\*\*|\*", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    out = []
    for ch in text.strip().lower():
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def heading_ids(markdown: str) -> set[str]:
    ids: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = HEADING.match(line)
        if m and not fenced:
            base = heading_id(m.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            ids.add(base if n == 0 else f"{base}-{n}")
    return ids


def looks_like_path(span: str) -> bool:
    if any(c in span for c in " <>*{}=,|$") or "://" in span or span.startswith("-"):
        return False
    if not re.fullmatch(r"[\w./-]+(:\d+)?", span):
        return False
    return "/" in span or span.endswith(PATH_EXTENSIONS)


def symbol_name(span: str) -> str | None:
    """The name a code span asks to be defined, or None if it is not a code symbol."""
    span = re.sub(r"<[^<>]*>", "", span)  # generics: `SplitQueue<H>`
    m = CALL.match(span)
    if m:
        first = re.split(r"::|\.", span)[0]
        return None if first in EXTERNAL_CRATES else m.group(1)
    span = span.rstrip("!")
    if RUST_PATH.match(span):
        parts = span.split("::")
        if parts[0] in EXTERNAL_CRATES:
            return None
        return parts[-1]
    if CAMEL.match(span) or SNAKE.match(span) or SCREAMING.match(span):
        return span
    return None


def not_code_names(path: Path) -> set[str]:
    names = set()
    if path.exists():
        for line in path.read_text().splitlines():
            word = line.split("#", 1)[0].strip()
            if word:
                names.add(word)
    return names


def check_document(name: str, text: str, repo: Repository, not_code: set[str]) -> list[Problem]:
    """Every problem in one document; `name` is its path relative to the repository."""
    problems: list[Problem] = []
    base = (repo.root / name).parent
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        def problem(what: str) -> None:
            problems.append(Problem(name, number, what))

        for target in INCLUDE.findall(line):
            problems.extend(Problem(name, number, w) for w in check_include(target, base, repo))
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        if NUMBERED_HEADING.match(line):
            problem(f"hand-written number in a heading (mdBook numbers chapters): {line.strip()}")
        for target in LINK.findall(line):
            what = check_link(target, base, repo)
            if what:
                problem(what)
        for span in CODE_SPAN.findall(line):
            span = span.strip()
            if span in not_code:
                continue
            if looks_like_path(span):
                path = re.sub(r":\d+$", "", span)
                if not path.startswith(NOT_IN_REPO) and not path.startswith("..") \
                        and not repo.path_exists(path):
                    problem(f"no such file or directory: `{span}`")
                continue
            symbol = symbol_name(span)
            if symbol and symbol not in repo.definitions and symbol not in not_code \
                    and span not in not_code:
                problem(f"no code defines `{symbol}` (named as `{span}`); if it is a name from the "
                        f"specification or QEMU, add it to tests/book/not_code.txt")
    return problems


def check_link(target: str, base: Path, repo: Repository) -> str | None:
    if re.match(r"^[a-z]+:", target) or target.startswith("//"):
        return None
    path, _, fragment = target.partition("#")
    file = (base / path).resolve() if path else None
    if file is not None:
        try:
            relative = str(file.relative_to(repo.root))
        except ValueError:
            return f"link leaves the repository: {target}"
        if not repo.path_exists(relative) and not file.exists():
            return f"link to a missing file: {target}"
    if fragment:
        markdown = file if file is not None else None
        if markdown is None:
            return None  # a fragment of this page: checked by the caller's heading ids below
        if markdown.suffix == ".md" and markdown.exists() \
                and fragment not in heading_ids(markdown.read_text()):
            return f"link to a missing heading: {target}"
    return None


def check_include(target: str, base: Path, repo: Repository) -> list[str]:
    path, _, anchor = target.partition(":")
    file = (base / path).resolve()
    if not file.is_file():
        return [f"include of a missing file: {target}"]
    if anchor and not anchor.isdigit() and f"ANCHOR: {anchor}" not in file.read_text():
        return [f"include of a missing anchor: {target} (no `ANCHOR: {anchor}` in {path})"]
    return []


def check_own_fragments(name: str, text: str) -> list[Problem]:
    ids = heading_ids(text)
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        for target in LINK.findall(line):
            if target.startswith("#") and target[1:] not in ids:
                problems.append(Problem(name, number, f"link to a missing heading: {target}"))
    return problems


def documents(root: Path = REPO) -> list[Path]:
    found: list[Path] = []
    for pattern in DOCUMENTS:
        found += sorted(p for p in root.glob(pattern) if p.is_file())
    return found


def check_all(root: Path = REPO) -> list[Problem]:
    repo = Repository.scan(root)
    not_code = not_code_names(Path(__file__).with_name("not_code.txt"))
    problems: list[Problem] = []
    for path in documents(root):
        name = str(path.relative_to(root))
        text = path.read_text()
        problems += check_document(name, text, repo, not_code)
        problems += check_own_fragments(name, text)
    return problems


def main() -> int:
    problems = check_all()
    for problem in problems:
        print(problem)
    checked = ", ".join(str(p.relative_to(REPO)) for p in documents())
    if problems:
        print(f"docs-check: {len(problems)} problem(s) in {checked}")
        return 1
    print(f"docs-check: every path, symbol, link and include named exists ({checked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
