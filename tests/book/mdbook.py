"""Building the book with mdBook: `./x.py docs` and `./x.py docs --serve`.

The book's sources are `docs/` (`docs/book.toml`, `docs/SUMMARY.md`, the chapters); mdBook writes
HTML to `build/book/`. mdBook is a Rust program: when it is not on the PATH (or in
`~/.cargo/bin`), it is installed once with `cargo install mdbook --locked`, and the caller is told.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOK_SOURCE = REPO / "docs"
BOOK_OUTPUT = REPO / "build" / "book"
#: How mdBook is installed when it is missing.
INSTALL_COMMAND = ["cargo", "install", "mdbook", "--locked"]


class BookError(Exception):
    """mdBook could not be found, installed or run."""


def find_mdbook() -> str | None:
    """The mdBook executable, on the PATH or where `cargo install` puts it."""
    found = shutil.which("mdbook")
    if found:
        return found
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    candidate = cargo_home / "bin" / "mdbook"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def ensure_mdbook(say: Callable[[str], None]) -> str:
    """mdBook's path, installing it through cargo first if it is missing (and saying so)."""
    found = find_mdbook()
    if found:
        return found
    say(f"mdBook is missing: installing it with `{' '.join(INSTALL_COMMAND)}` "
        "(a few minutes, once)")
    status = subprocess.run(INSTALL_COMMAND, cwd=REPO).returncode
    found = find_mdbook()
    if status != 0 or not found:
        raise BookError(f"`{' '.join(INSTALL_COMMAND)}` failed (exit status {status}); "
                        "install mdBook yourself and run again")
    say(f"mdBook installed: {found}")
    return found


def build(say: Callable[[str], None]) -> Path:
    """Builds the book into build/book/ and returns the path of its index.html."""
    mdbook = ensure_mdbook(say)
    result = subprocess.run([mdbook, "build", str(BOOK_SOURCE), "--dest-dir", str(BOOK_OUTPUT)],
                            cwd=REPO)
    index = BOOK_OUTPUT / "index.html"
    if result.returncode != 0:
        raise BookError(f"mdbook build failed (exit status {result.returncode}, output above)")
    if not index.is_file():
        raise BookError(f"mdbook build succeeded but wrote no {index}")
    return index


def serve(say: Callable[[str], None], port: int = 3000) -> int:
    """Serves the book on 127.0.0.1:`port`, rebuilding on every change, until Ctrl-C."""
    mdbook = ensure_mdbook(say)
    say(f"serving the book on http://127.0.0.1:{port}/ (Ctrl-C stops)")
    return subprocess.run([mdbook, "serve", str(BOOK_SOURCE), "--dest-dir", str(BOOK_OUTPUT),
                           "--hostname", "127.0.0.1", "--port", str(port)], cwd=REPO).returncode
