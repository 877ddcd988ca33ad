//! The shell's `rng <n>`: n random bytes from the kernel's entropy source
//! (`crate::entropy`: virtio-rng when there is one), in hex, and the source
//! they came from. Two calls print different bytes.

use alloc::format;
use alloc::vec;
use core::fmt::Write as _;

use super::{CommandResult, Output};
use crate::entropy;

/// The most bytes one `rng` prints.
pub const MAX_BYTES: usize = 4096;
/// Bytes per line of hex.
const PER_LINE: usize = 32;

/// `rng <n>`: prints `n` (1 to [`MAX_BYTES`]) random bytes in hex, 32 a
/// line, then `(n bytes from <source>)`.
pub fn rng(args: &[&str], out: &mut Output) -> CommandResult {
    let [count] = args else {
        return Err("usage: rng <n>".into());
    };
    let n = count
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_BYTES).contains(n))
        .ok_or_else(|| format!("n must be a number from 1 to {MAX_BYTES}"))?;
    let mut bytes = vec![0u8; n];
    let source = entropy::fill(&mut bytes);
    for line in bytes.chunks(PER_LINE) {
        for byte in line {
            let _ = write!(out, "{byte:02x}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "({n} bytes from {source})");
    if let Some((location, stats, stopped)) = entropy::device_summary() {
        let state = if stopped {
            ", stopped after an error"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "(rng at {location}: {} requests, {} bytes so far{state})",
            stats.requests, stats.bytes
        );
    }
    Ok(())
}
