//! A `log` backend for host tests: prints driver narration when `RUST_LOG`
//! contains `trace`, and lets a test capture what the drivers said while a
//! closure ran (to check the trace text the docs quote).

use std::cell::RefCell;
use std::sync::{Once, OnceLock};

struct CaptureLogger;

thread_local! {
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn print_traces() -> bool {
    static PRINT: OnceLock<bool> = OnceLock::new();
    *PRINT.get_or_init(|| std::env::var("RUST_LOG").is_ok_and(|v| v.contains("trace")))
}

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        print_traces() || CAPTURED.with(|c| c.borrow().is_some())
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = record.args().to_string();
        if print_traces() {
            eprintln!("[{}] {}", record.level(), line);
        }
        CAPTURED.with(|c| {
            if let Some(lines) = c.borrow_mut().as_mut() {
                lines.push(line);
            }
        });
    }

    fn flush(&self) {}
}

static LOGGER: CaptureLogger = CaptureLogger;

/// Installs the logger once per test binary (later calls do nothing).
pub fn install_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another logger may already be installed by the test binary; then
        // narration goes there and capture sees nothing, which tests notice.
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Runs `f` and returns its result with every log line emitted on this thread meanwhile.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    install_logger();
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let result = f();
    let lines = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (result, lines)
}
