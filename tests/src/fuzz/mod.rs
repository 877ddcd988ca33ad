//! # Fuzz targets: everything a device or a user controls
//!
//! Each target is a plain function `fn(&[u8])` that turns arbitrary bytes
//! into what a hostile device (or a careless user) could send, runs the
//! driver code on it, and panics only if the code under test misbehaves:
//! a panic inside the driver, an invariant broken (a request completed
//! twice, a descriptor lost, a length beyond the buffer), or a leak
//! counted by the host Hal ([`HostHal::live_dma_pages`],
//! [`HostHal::live_shares`]) once everything is dropped.
//!
//! The functions build on stable Rust, so `cargo test` replays every
//! committed input (`tests/tests/fuzz_corpus.rs` runs each target over
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`). The
//! cargo-fuzz crate in `fuzz/` (nightly, libFuzzer) wraps each function
//! in a one-line `fuzz_target!`; `./x.py fuzz [TARGET] [--seconds N]`
//! runs them. See `fuzz/README.md`.
//!
//! | target | what the bytes become | module |
//! |--------|-----------------------|--------|
//! | `split_ring` | used-ring entries, `used.idx`, flags and `avail_event` of a split queue (virtio 1.2 §2.7.8, §2.7.10) | [`ring`] |
//! | `packed_ring` | used descriptors, wrap counters and the device event suppression area of a packed queue (§2.8.6, §2.8.10) | [`ring`] |
//! | `device_config` | the feature offer and the device configuration space of a block, network or console device, changing under the driver's feet (§2.5, §5.2.4, §5.1.4, §5.3.4) | [`config`] |
//! | `console_control` | multiport control messages and their used lengths (§5.3.6.2) | [`console`] |
//! | `net_rx` | virtio-net headers, `num_buffers` and used lengths of received buffers (§5.1.6.3, §5.1.6.4) | [`net`] |
//! | `pci_caps` | the PCI capability list and the virtio-pci capabilities in it (PCI 3.0 §6.7, virtio §4.1.4) | [`pci`] |
//! | `shell_line` | keys typed at the shell (`kernel/src/shell/line.rs`) | [`shell`] |
//! | `http_request` | what a client sends to port 80 (`kernel/src/net/http_request.rs`) | [`http`] |

pub mod config;
pub mod console;
pub mod http;
pub mod input;
pub mod net;
pub mod pci;
pub mod ring;
pub mod shell;

use crate::host_hal::HostHal;

pub use config::device_config;
pub use console::console_control;
pub use http::http_request;
pub use input::Input;
pub use net::net_rx;
pub use pci::pci_caps;
pub use ring::{packed_ring, split_ring};
pub use shell::shell_line;

/// A fuzz target: its name (the cargo-fuzz target and corpus directory)
/// and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("split_ring", split_ring),
    ("packed_ring", packed_ring),
    ("device_config", device_config),
    ("console_control", console_control),
    ("net_rx", net_rx),
    ("pci_caps", pci_caps),
    ("shell_line", shell_line),
    ("http_request", http_request),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Starts one input: no register devices left from an earlier one.
fn begin() {
    HostHal::clear_devices();
}

/// Ends one input, after every driver object was dropped: nothing leaked.
/// A leak is a failure like a crash (the fuzzer reports it as one).
fn end_without_leaks(target: &str) {
    HostHal::clear_devices();
    let pages = HostHal::live_dma_pages();
    let shares = HostHal::live_shares();
    assert!(
        pages == 0 && shares == 0,
        "{target}: leaked {pages} DMA pages and {shares} shared buffers"
    );
}
