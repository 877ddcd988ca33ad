//! The `log` crate backend: every `log::info!` (and friends) in the kernel and
//! the drivers ends up as one line on the serial console:
//!
//! ```text
//! [   1.234567] INFO kernel::boot: message
//!  ^ seconds since boot (clock::uptime_ns; 0 until the TSC is calibrated)
//! ```
//!
//! The level comes from `log=off|error|warn|info|debug|trace` on the command
//! line. Without `log=`:
//!
//! - a normal boot logs warnings and errors only ([`DEFAULT_LEVEL`]). What a
//!   person needs to see is not log output but the kernel's own lines
//!   (docs/contract.md): one `virtio:` line per device, the
//!   `block:` and `net0:` lines, the DHCP lease, `kernel: ready`. The boot
//!   is quicker for it too: every log line is a few hundred port writes to
//!   the UART, each a trip into the emulator;
//! - `mode=selftest` and `mode=bench` log at `info` ([`RECORD_LEVEL`]): their
//!   serial log is the record a test or a benchmark reads afterwards
//!   (interrupt routes, per-queue counters, why a device is polled).
//!
//! `log=info` shows the bring-up step by step, `log=debug` adds routes,
//! queues and features, and at `trace` the drivers narrate the virtio
//! protocol; they check `log::log_enabled!` before expensive formatting, so
//! a lower level costs them nothing.

use log::{LevelFilter, Log, Metadata, Record};

/// The level of a normal boot without `log=`.
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Warn;

/// The level of a `mode=selftest` or `mode=bench` run without `log=`.
pub const RECORD_LEVEL: LevelFilter = LevelFilter::Info;

/// The level used when `log=` is absent (see the module docs).
fn default_level() -> LevelFilter {
    match crate::cmdline::get("mode") {
        Some("selftest" | "bench") => RECORD_LEVEL,
        _ => DEFAULT_LEVEL,
    }
}

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let uptime_ns = crate::clock::uptime_ns();
        let seconds = uptime_ns / 1_000_000_000;
        let micros = (uptime_ns % 1_000_000_000) / 1_000;
        crate::println!(
            "[{seconds:>4}.{micros:06}] {} {}: {}",
            record.level(),
            record.target(),
            record.args()
        );
        // And on the screen, if one is up (screen/mod.rs).
        crate::screen::log_line(format_args!(
            "[{seconds:>4}.{micros:06}] {} {}: {}",
            record.level(),
            record.target(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Parses a `log=` value; `None` if it is not a level name.
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    match value {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Installs the logger with the level from `log=` (see [`parse_level`]),
/// or the default of the boot's mode. An unknown level name is reported and
/// the default used. Needs the command line (`cmdline::init`) first.
pub fn init(level_word: Option<&str>) {
    let level = level_word.and_then(parse_level);
    let default = default_level();
    // set_logger fails only if a logger is already installed, i.e. if init
    // ran twice; the first one stays, which is fine.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level.unwrap_or(default));
    if let (Some(word), None) = (level_word, level) {
        log::warn!(
            "unknown log level {word:?} (want off|error|warn|info|debug|trace); using {default}"
        );
    }
}
