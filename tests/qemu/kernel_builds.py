"""Which kernel a boot needs, where each build's ELF lives, and the check
that the kernel people boot carries no test or benchmark code.

The kernel crate has two cargo features (kernel/Cargo.toml):

- `selftest`: the in-guest self-tests (`mode=selftest`) and the test-only
  command-line keys (`expect.*`, `blk.*`, `fail=`);
- `bench`: the benchmarks (`mode=bench`, `bench.*`) and the peer stack they
  compare with (the `virtio-drivers` crate, linked only into this build).

`./x.py run` boots the production kernel (no feature), `./x.py build` and
`./x.py test` build the `selftest` one, `./x.py bench` the `bench` one. The
features change the binary cargo writes to one and the same path, so x.py
copies each build to a path of its own (`elf_name`) and uses that copy.

Standard library only; unit-tested in `test_kernel_builds.py`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence

#: Every feature the kernel crate declares.
FEATURES = ("selftest", "bench")

#: (command-line word pattern, feature it needs). A word is one
#: whitespace-separated `key=value` of the kernel command line.
_WORDS_NEEDING = (
    (re.compile(r"^mode=selftest$"), "selftest"),
    (re.compile(r"^fail="), "selftest"),
    (re.compile(r"^mode=bench$"), "bench"),
)


def features_for_append(append: str) -> tuple[str, ...]:
    """The features a kernel needs to do what `append` asks (sorted, unique)."""
    wanted = {feature for word in append.split() for pattern, feature in _WORDS_NEEDING
              if pattern.search(word)}
    return tuple(sorted(wanted))


def normalize(features: Iterable[str]) -> tuple[str, ...]:
    """Sorted, unique, and only features the crate has (ValueError otherwise)."""
    chosen = tuple(sorted({f for f in features if f}))
    unknown = [f for f in chosen if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown kernel feature(s) {', '.join(unknown)} (known: {', '.join(FEATURES)})")
    return chosen


def elf_name(features: Sequence[str], release: bool) -> str:
    """`kernel.elf` (production), `kernel-selftest.elf`, `kernel-bench-release.elf`, ..."""
    parts = ["kernel", *normalize(features)] + (["release"] if release else [])
    return "-".join(parts) + ".elf"


def describe(features: Sequence[str]) -> str:
    """Words for a message: `the production kernel (no cargo feature)` or
    `the kernel with cargo feature(s) selftest`."""
    chosen = normalize(features)
    if not chosen:
        return "the production kernel (no cargo feature)"
    return f"the kernel with cargo feature(s) {', '.join(chosen)}"


# --- what the production ELF must not contain ---------------------------------
#
# Checked on `nm -C` output (demangled names). A pattern here must name code
# that only a feature build has, by a name it cannot share with production
# code: the peer crates, and the modules the features add.

FORBIDDEN_IN_PRODUCTION: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("the peer stack (virtio-drivers)", re.compile(r"\bvirtio_drivers::")),
    ("zerocopy (peer stack only)", re.compile(r"\bzerocopy::")),
    ("the peer glue (kernel/src/peer)", re.compile(r"\bkernel::peer::")),
    ("the benchmarks", re.compile(r"\bkernel::(bench|block::bench|net::bench)::")),
    ("the self-test runner", re.compile(r"\bkernel::selftest(_api)?::")),
    # `selftests`, `irq_selftests`, `test_bringup`, ...: test-only modules.
    ("a self-test module", re.compile(r"\bkernel::(\w+::)*(\w*selftests|test_\w+)::")),
)

#: A symbol every kernel has: proves the listing is not empty or stripped.
ALWAYS_PRESENT = re.compile(r"\bkernel::kernel_main\b")


def forbidden_symbols(nm_output: str, limit: int = 5) -> list[str]:
    """Problems with a production ELF's `nm -C` listing (empty list: clean).

    Each problem names what was found and up to `limit` of the symbols.
    """
    names = [line.split(None, 2)[-1] for line in nm_output.splitlines() if line.strip()]
    if not any(ALWAYS_PRESENT.search(name) for name in names):
        return ["no kernel::kernel_main symbol: the listing is empty or the ELF is stripped, "
                "so it proves nothing"]
    problems = []
    for what, pattern in FORBIDDEN_IN_PRODUCTION:
        hits = [name for name in names if pattern.search(name)]
        if hits:
            shown = "; ".join(hits[:limit]) + (f"; ... ({len(hits)} in all)" if len(hits) > limit else "")
            problems.append(f"{what}: {shown}")
    return problems


def nm_listing(elf: str, nm: str = "nm") -> str:
    """`nm -C <elf>` (raises RuntimeError if nm fails)."""
    proc = subprocess.run([nm, "-C", elf], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{nm} -C {elf}` failed: {proc.stderr.strip()}")
    return proc.stdout
