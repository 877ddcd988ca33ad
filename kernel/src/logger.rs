//! The `log` crate backend: every `log::info!` (and friends) in the kernel and
//! the drivers ends up as one line on the serial console:
//!
//! ```text
//! [   1.234567] INFO kernel::boot: message
//!  ^ seconds since boot (clock::uptime_ns; 0 until the TSC is calibrated)
//! ```
//!
//! The level comes from `log=error|warn|info|debug|trace` on the command line
//! (default `info`). The drivers narrate the virtio protocol at `trace`
//! level, and check `log::log_enabled!` before expensive formatting, so a
//! lower level costs them nothing.

use log::{LevelFilter, Log, Metadata, Record};

/// The level used when `log=` is absent.
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Info;

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

/// Installs the logger with the level from `log=` (see [`parse_level`]).
/// An unknown level name is reported and the default used.
pub fn init(level_word: Option<&str>) {
    let level = level_word.and_then(parse_level);
    // set_logger fails only if a logger is already installed, i.e. if init
    // ran twice; the first one stays, which is fine.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level.unwrap_or(DEFAULT_LEVEL));
    if let (Some(word), None) = (level_word, level) {
        log::warn!(
            "unknown log level {word:?} (want error|warn|info|debug|trace); using {DEFAULT_LEVEL}"
        );
    }
}
