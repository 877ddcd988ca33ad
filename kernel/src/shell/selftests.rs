//! The shell's in-kernel self-tests (`mode=selftest`, cargo feature
//! `selftest`): line editing, the `send`/`recv` pattern and hash, the
//! command table and `help`, and the console driver on the console the
//! probe found (which claims the device for the shell).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use drivers::transport::DeviceType;

use super::line::{Action, LineEditor};
use super::{command, console, execute, pattern_byte, Fnv1a, Output, COMMANDS, USAGE_WIDTH};
use crate::selftest_api::SelfTest;
use crate::virtio;

/// The shell's self-tests, and, if a console came up, one of the console
/// driver on it (which claims the device: register it after the generic
/// virtio tests, which use the generic queues).
pub fn selftests() -> Vec<SelfTest> {
    let mut tests = vec![
        SelfTest {
            name: "shell: line editing (backspace, Ctrl-U, Ctrl-C, CR LF, escapes)",
            run: test_line_editing,
        },
        SelfTest {
            name: "shell: pattern and FNV-1a hash match their definitions",
            run: test_pattern_and_hash,
        },
        SelfTest {
            name: "shell: help lists every command of the table once, and each name dispatches",
            run: test_command_table,
        },
    ];
    let console = virtio::devices()
        .iter()
        .any(|d| d.device_type == DeviceType::Console && d.has_transport());
    if console {
        tests.push(SelfTest {
            name: "console: the driver claims the console, runs the handshake and writes port 0",
            run: test_console_driver,
        });
        if crate::iommu::strict() {
            tests.push(SelfTest {
                name: "console: a write during which the IOMMU blocked a DMA of the console fails",
                run: test_console_dma_blocked,
            });
        }
    }
    tests
}

/// Claims the console, checks what the driver negotiated and found, and
/// writes one line through the console port (and one through EMERG_WRITE
/// when negotiated), waiting until the device has taken it.
fn test_console_driver() -> Result<(), String> {
    if !console::init() {
        return Err("the console driver did not come up (see the log)".into());
    }
    let mut guard = console::lock();
    let c = guard.as_mut().ok_or("no console after init")?;
    let mut wait = console::waiter(c.location, 2_000_000_000);
    // The host's PORT_OPEN comes after the port's PORT_ADD and
    // CONSOLE_PORT, in a later control message: wait for it too.
    c.device
        .wait_until(&mut wait, |d| {
            Ok(d.console_port()
                .and_then(|p| d.port(p))
                .is_some_and(|p| p.host_open))
        })
        .map_err(|e| format!("no console port open on the host side: {e}"))?;
    let port = c.device.console_port().ok_or("no console port")?;
    let line = format!(
        "console: driver self-test on port {port} ({} port(s), {})\n",
        c.device.ports().count(),
        c.device.config()
    );
    c.device
        .write_all(port, line.as_bytes(), &mut wait)
        .map_err(|e| format!("write: {e}"))?;
    c.device
        .flush(port, &mut wait)
        .map_err(|e| format!("flush: {e}"))?;
    let sent = c.device.port(port).map_or(0, |p| p.stats.bytes_sent);
    if sent != line.len() as u64 {
        return Err(format!(
            "port {port} counted {sent} bytes sent, wrote {}",
            line.len()
        ));
    }
    if c.device.config().emergency_write {
        let n = c
            .device
            .emergency_write(b"console: emergency write self-test\r\n")
            .map_err(|e| format!("emergency write: {e}"))?;
        if n != 36 {
            return Err(format!("emergency write took {n} of 36 bytes"));
        }
    }
    let stats = c.device.stats();
    if stats.control_errors != 0 || stats.queue_errors != 0 || c.device.is_failed() {
        return Err(format!("device misbehaved: {stats:?}"));
    }
    Ok(())
}

fn test_pattern_and_hash() -> Result<(), String> {
    // FNV-1a 64 test vectors (from the algorithm's reference).
    let mut h = Fnv1a::new();
    h.update(b"");
    if h.value() != 0xcbf2_9ce4_8422_2325 {
        return Err(format!("fnv1a64(\"\") = {:#x}", h.value()));
    }
    let mut h = Fnv1a::new();
    h.update(b"a");
    if h.value() != 0xaf63_dc4c_8601_ec8c {
        return Err(format!("fnv1a64(\"a\") = {:#x}", h.value()));
    }
    let first: Vec<u8> = (0..4).map(|i| pattern_byte(i, 7)).collect();
    if first != [7, 138, 13, 144] || pattern_byte(256, 0) != ((256 * 131 + 1) % 256) as u8 {
        return Err(format!("pattern starts {first:?}"));
    }
    Ok(())
}

/// `help` shows every command of [`COMMANDS`] exactly once with its
/// arguments, names are unique and found by [`command`], and a name that is
/// not in the table is refused.
fn test_command_table() -> Result<(), String> {
    let mut out = Output::default();
    execute("help", &mut out);
    let text = String::from_utf8_lossy(&out.bytes).into_owned();
    if !text.starts_with("commands:\r\n") {
        return Err(format!("help starts {:?}", text.get(..40).unwrap_or(&text)));
    }
    for (i, entry) in COMMANDS.iter().enumerate() {
        if COMMANDS[..i].iter().any(|c| c.name == entry.name) {
            return Err(format!("`{}` is in the table twice", entry.name));
        }
        if !command(entry.name).is_some_and(|c| core::ptr::eq(c, entry)) {
            return Err(format!("`{}` does not dispatch to its entry", entry.name));
        }
        let usage = if entry.args.is_empty() {
            String::from(entry.name)
        } else {
            format!("{} {}", entry.name, entry.args)
        };
        if usage.len() > USAGE_WIDTH {
            return Err(format!("usage `{usage}` is wider than help's column"));
        }
        let row = format!("  {usage:<USAGE_WIDTH$} {}\r\n", entry.help);
        if text.matches(row.as_str()).count() != 1 {
            return Err(format!("help does not list `{usage}` once: {text:?}"));
        }
    }
    let rows = text.lines().filter(|l| l.starts_with("  ")).count();
    if rows != COMMANDS.len() {
        return Err(format!(
            "help has {rows} rows for {} commands",
            COMMANDS.len()
        ));
    }
    let mut out = Output::default();
    execute("frobnicate now", &mut out);
    if !out
        .bytes
        .starts_with(b"error: unknown command `frobnicate`")
    {
        return Err(format!(
            "an unknown command printed {:?}",
            String::from_utf8_lossy(&out.bytes)
        ));
    }
    Ok(())
}

/// Feeds typical key sequences and checks lines and echo.
fn test_line_editing() -> Result<(), String> {
    fn run(input: &[u8]) -> (Vec<Action>, Vec<u8>) {
        let mut editor = LineEditor::new();
        let mut echo = Vec::new();
        let actions = input
            .iter()
            .map(|&b| editor.feed(b, &mut echo))
            .filter(|a| *a != Action::Editing)
            .collect();
        (actions, echo)
    }
    let submit = |s: &str| Action::Submit(String::from(s));
    let cases: [(&[u8], Vec<Action>, &[u8]); 7] = [
        (b"help\r", vec![submit("help")], b"help\r\n"),
        (b"ab\x7fc\r\n", vec![submit("ac")], b"ab\x08 \x08c\r\n"),
        (
            b"xy\x15ok\n",
            vec![submit("ok")],
            b"xy\x08 \x08\x08 \x08ok\r\n",
        ),
        (b"oops\x03", vec![Action::Cancel], b"oops^C\r\n"),
        (b"\x1b[Aup\x1bOP\r", vec![submit("up")], b"up\r\n"),
        (b"\x7f\r\r", vec![submit(""), submit("")], b"\r\n\r\n"),
        (b"a\x01\xffb\r", vec![submit("ab")], b"ab\r\n"),
    ];
    for (input, actions, echo) in cases {
        let (got_actions, got_echo) = run(input);
        if got_actions != actions || got_echo != echo {
            return Err(format!(
                "input {input:?}: got {got_actions:?} echo {got_echo:?}, want {actions:?} echo {echo:?}"
            ));
        }
    }
    Ok(())
}

/// With a fault armed for the console (`iommu::arm_fault`: as if the unit had blocked its read
/// of the bytes), `console::write_all` fails with the fault; the next write succeeds.
fn test_console_dma_blocked() -> Result<(), String> {
    let (location, port) = {
        let guard = console::lock();
        let c = guard
            .as_ref()
            .ok_or("no console (the driver test claims it first)")?;
        (
            c.location,
            c.device.console_port().ok_or("no console port")?,
        )
    };
    if !crate::iommu::arm_fault(location, true, 0xdead_0000) {
        return Err(format!("console at {location} has no PCI source ID"));
    }
    match console::write_all(port, b"console: write with a blocked DMA\n", 2_000_000_000) {
        Err(console::WriteError::DmaBlocked(fault))
            if fault.read && fault.address == 0xdead_0000 => {}
        other => return Err(format!("the write with a blocked DMA gave {other:?}")),
    }
    console::write_all(port, b"console: write after it\n", 2_000_000_000)
        .map_err(|e| format!("the next write failed: {e}"))
}
