//! The kernel command line: what `qemu-system-x86_64 -append "..."` passed,
//! delivered through the PVH start info (`boot::pvh`).
//!
//! Syntax, as Linux uses it: words separated by spaces; a word is either a
//! flag (`quiet`) or `key=value` (split at the first `=`, so values may
//! contain `=`). No quoting. A key may repeat: QEMU's `microvm` appends one
//! `virtio_mmio.device=...` per device. [`get`] returns the last value (a later
//! word overrides an earlier one), [`values`] all of them in order.
//!
//! Words the kernel reads (docs/contract.md has the full
//! list): `mode=selftest|bench`, `log=error|warn|info|debug|trace`,
//! `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`, `virtio.*`, `net.*`,
//! `console.*`. Keys only the self-tests and benchmarks read (`expect.*`,
//! `blk.*`, `bench.*`, `fail=`) are read in their own modules, which only
//! the `selftest` and `bench` builds contain; tests/qemu/README.md lists them.

use spin::Once;

#[cfg(feature = "selftest")]
mod selftests;
#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// A parsed view of one command-line string.
#[derive(Debug, Clone, Copy)]
pub struct CommandLine<'a> {
    text: &'a str,
}

impl<'a> CommandLine<'a> {
    /// A view of `text`; parsing happens lazily on each lookup.
    pub const fn new(text: &'a str) -> Self {
        Self { text }
    }

    fn words(self) -> impl Iterator<Item = &'a str> {
        self.text.split_ascii_whitespace()
    }

    /// Every value given for `key`, in command-line order.
    pub fn values<'k>(self, key: &'k str) -> impl Iterator<Item = &'a str> + use<'a, 'k> {
        self.words()
            .filter_map(move |word| match word.split_once('=') {
                Some((name, value)) if name == key => Some(value),
                _ => None,
            })
    }

    /// The value of the last `key=value` word, if any.
    pub fn get(self, key: &str) -> Option<&'a str> {
        self.values(key).last()
    }

    /// True if the bare word `key` (without `=`) is present.
    pub fn has_flag(self, key: &str) -> bool {
        self.words().any(|word| word == key)
    }
}

static CMDLINE: Once<CommandLine<'static>> = Once::new();

/// Remembers the command line. Called once at boot, right after the start
/// info has been parsed; before that every lookup finds nothing.
pub fn init(cmdline: &'static str) {
    CMDLINE.call_once(|| CommandLine::new(cmdline));
}

fn current() -> CommandLine<'static> {
    CMDLINE.get().copied().unwrap_or(CommandLine::new(""))
}

/// Every value given for `key` on the kernel command line, in order.
#[allow(
    dead_code,
    reason = "API for repeated keys such as virtio_mmio.device="
)]
pub fn values(key: &str) -> impl Iterator<Item = &'static str> + '_ {
    current().values(key)
}

/// The value of the last `key=value` word on the kernel command line.
pub fn get(key: &str) -> Option<&'static str> {
    current().get(key)
}

/// True if the bare word `key` is on the kernel command line.
#[allow(
    dead_code,
    reason = "agreed kernel API (notes/kernel_api.md); no flag is read yet"
)]
pub fn has_flag(key: &str) -> bool {
    current().has_flag(key)
}
