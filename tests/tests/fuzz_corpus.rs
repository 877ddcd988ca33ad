//! Replays the fuzz corpus on stable: every input committed under
//! `fuzz/corpus/<target>/` (what the fuzzer found interesting) and
//! `fuzz/regressions/<target>/` (inputs that once crashed a target, each
//! also explained by a named test beside the code it broke) runs through
//! its target function from `tests::fuzz`, which panics on a crash, a
//! broken invariant or a leak. See `fuzz/README.md`.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tests::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted (none if it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_a_cargo_fuzz_shim() {
    for (name, _) in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(name);
        assert!(
            !inputs(&corpus).is_empty(),
            "no corpus for target {name} in {}",
            corpus.display()
        );
        let shim = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = fs::read_to_string(&shim).unwrap_or_else(|e| panic!("{}: {e}", shim.display()));
        assert!(
            text.contains(&format!("tests::fuzz::{name}")) || text.contains(&format!("::{name}(")),
            "{} does not call the target function",
            shim.display()
        );
    }
}

#[test]
fn the_corpus_and_every_past_crash_replay_clean() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, run) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in inputs(&fuzz_dir().join(kind).join(name)) {
                let data = fs::read(&file).expect("readable corpus file");
                replayed += 1;
                if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
    assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
}
