"""`./x.py fuzz`: the cargo-fuzz targets of fuzz/ under libFuzzer (nightly).

Each target is a plain function in tests/src/fuzz/ (stable, replayed over the
committed corpus by `cargo test`); fuzz/fuzz_targets/<name>.rs is its
one-line libFuzzer shim. This module installs what the run needs (a nightly
toolchain, cargo-fuzz), runs the targets one after another (the machine is
shared: one libFuzzer process at a time, under `nice`), and reports
executions, rate and crashes per target, also written to
build/fuzz/results.json.

New inputs go to build/fuzz/corpus/<name>/, never into the committed
fuzz/corpus/<name>/; `--merge` copies into the committed corpus only the
inputs that add coverage (libFuzzer's -merge=1). A crash leaves its input in
build/fuzz/artifacts/<name>/; turn it into a regression (fuzz/README.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FUZZ_DIR = REPO / "fuzz"
WORK_DIR = REPO / "build" / "fuzz"
TOOLCHAIN = "nightly"


class FuzzError(Exception):
    """A failure to report in one line."""


@dataclass
class TargetResult:
    """What one libFuzzer run of one target did."""

    target: str
    executions: int
    seconds: float
    crashed: bool
    artifact: str | None
    corpus: int

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else 0.0


def targets() -> list[str]:
    """The targets, in fuzz/Cargo.toml's order."""
    with open(FUZZ_DIR / "Cargo.toml", "rb") as f:
        manifest = tomllib.load(f)
    return [b["name"] for b in manifest.get("bin", [])]


def _ok(args: list[str]) -> bool:
    try:
        return subprocess.run(args, cwd=REPO, capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def ensure_tools(say: Callable[[str], None]) -> None:
    """A nightly toolchain and cargo-fuzz, installed (saying so) when missing."""
    if shutil.which("rustup") is None:
        raise FuzzError("rustup is not installed: install Rust with rustup (https://rustup.rs) first")
    if not _ok(["cargo", f"+{TOOLCHAIN}", "--version"]):
        say(f"no {TOOLCHAIN} toolchain: running `rustup toolchain install {TOOLCHAIN} --profile minimal`")
        if subprocess.run(["rustup", "toolchain", "install", TOOLCHAIN, "--profile", "minimal"]).returncode != 0:
            raise FuzzError(f"installing the {TOOLCHAIN} toolchain failed")
    if not _ok(["cargo", f"+{TOOLCHAIN}", "fuzz", "--version"]):
        say("cargo-fuzz not found: running `cargo install cargo-fuzz`")
        if subprocess.run(["cargo", "install", "cargo-fuzz"]).returncode != 0:
            raise FuzzError("`cargo install cargo-fuzz` failed")


def _fuzz_cmd() -> list[str]:
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    return [*nice, "cargo", f"+{TOOLCHAIN}", "fuzz"]


def build(names: list[str], sanitizer: str) -> None:
    for name in names:
        cmd = [*_fuzz_cmd(), "build", "--sanitizer", sanitizer, name]
        if subprocess.run(cmd, cwd=FUZZ_DIR).returncode != 0:
            raise FuzzError(f"building fuzz target {name} failed (output above)")


def parse_stats(output: str) -> tuple[int, float | None]:
    """Executions and seconds from libFuzzer's output (final stats, or its last status line)."""
    done = re.findall(r"Done (\d+) runs in (\d+) second", output)
    if done:
        runs, secs = done[-1]
        return int(runs), float(secs)
    units = re.findall(r"stat::number_of_executed_units: (\d+)", output)
    if units:
        return int(units[-1]), None
    status = re.findall(r"^#(\d+)\s", output, re.MULTILINE)
    return (int(status[-1]) if status else 0), None


def run_target(name: str, seconds: int, sanitizer: str, log: Path) -> TargetResult:
    corpus = WORK_DIR / "corpus" / name
    artifacts = WORK_DIR / "artifacts" / name
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = [d for d in (FUZZ_DIR / "corpus" / name, FUZZ_DIR / "regressions" / name) if d.is_dir()]
    cmd = [*_fuzz_cmd(), "run", "--sanitizer", sanitizer, name, str(corpus), *map(str, seeds), "--",
           f"-max_total_time={seconds}", "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
           "-rss_limit_mb=1024", "-timeout=10"]
    before = set(artifacts.iterdir())
    start = time.monotonic()
    with open(log, "w") as out:
        status = subprocess.run(cmd, cwd=FUZZ_DIR, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    text = log.read_text(errors="replace")
    executions, secs = parse_stats(text)
    new_artifacts = sorted(set(artifacts.iterdir()) - before)
    crashed = status != 0 or bool(new_artifacts)
    return TargetResult(
        target=name,
        executions=executions,
        seconds=secs if secs else min(wall, float(seconds)),
        crashed=crashed,
        artifact=str(new_artifacts[0].relative_to(REPO)) if new_artifacts else None,
        corpus=sum(1 for _ in corpus.iterdir()),
    )


def merge(name: str, sanitizer: str) -> int:
    """Adds to fuzz/corpus/<name>/ the inputs of build/fuzz/corpus/<name>/ that add coverage."""
    committed = FUZZ_DIR / "corpus" / name
    found = WORK_DIR / "corpus" / name
    committed.mkdir(parents=True, exist_ok=True)
    if not found.is_dir():
        return 0
    before = len(list(committed.iterdir()))
    cmd = [*_fuzz_cmd(), "run", "--sanitizer", sanitizer, name, str(committed), str(found), "--", "-merge=1"]
    if subprocess.run(cmd, cwd=FUZZ_DIR, capture_output=True).returncode != 0:
        raise FuzzError(f"merging the corpus of {name} failed")
    return len(list(committed.iterdir())) - before


def run(names: list[str], seconds: int, sanitizer: str, do_merge: bool, say: Callable[[str], None]) -> int:
    known = targets()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FuzzError(f"no fuzz target {', '.join(unknown)}; targets: {', '.join(known)}")
    chosen = names or known
    ensure_tools(say)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    say(f"building {len(chosen)} target(s) with cargo +{TOOLCHAIN} fuzz (sanitizer: {sanitizer})")
    build(chosen, sanitizer)
    results: list[TargetResult] = []
    for name in chosen:
        log = WORK_DIR / f"{name}.log"
        say(f"fuzzing {name} for {seconds} s (log: {log.relative_to(REPO)})")
        result = run_target(name, seconds, sanitizer, log)
        results.append(result)
        verdict = f"CRASH, input in {result.artifact}" if result.crashed else "0 crashes, 0 leaks"
        say(f"{name}: {result.executions:,} executions in {result.seconds:.0f} s "
            f"({result.rate:,.0f}/s), {verdict}")
        if do_merge and not result.crashed:
            say(f"{name}: {merge(name, sanitizer)} input(s) added to fuzz/corpus/{name}/")
    print(f"\n{'target':<18}{'executions':>14}{'seconds':>9}{'exec/s':>10}{'corpus':>8}  result")
    for r in results:
        print(f"{r.target:<18}{r.executions:>14,}{r.seconds:>9.0f}{r.rate:>10,.0f}{r.corpus:>8}  "
              f"{'CRASH ' + (r.artifact or '') if r.crashed else 'ok'}")
    summary = {"seconds_per_target": seconds, "sanitizer": sanitizer,
               "targets": [{**asdict(r), "exec_per_s": round(r.rate)} for r in results]}
    (WORK_DIR / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"results in {(WORK_DIR / 'results.json').relative_to(REPO)}")
    return 1 if any(r.crashed for r in results) else 0
